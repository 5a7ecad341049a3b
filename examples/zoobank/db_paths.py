"""Where zoobank keeps its data, relative to the app root."""

import os

HERE = os.path.dirname(os.path.abspath(__file__))
CRED_DB = os.path.join(HERE, "db", "cred", "cred.db")
BANK_DB = os.path.join(HERE, "db", "bank", "bank.db")
