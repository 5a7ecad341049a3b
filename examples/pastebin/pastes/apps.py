from django.apps import AppConfig


class PastesConfig(AppConfig):
    name = "pastes"
    default_auto_field = "django.db.models.BigAutoField"
