from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True
    dependencies = []

    operations = [
        migrations.CreateModel(
            name="Snippet",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("content", models.TextField()),
                ("author", models.CharField(max_length=100)),
                ("created", models.DateTimeField(auto_now_add=True)),
                ("delete_token", models.CharField(max_length=64)),
            ],
            options={"ordering": ["-id"], "base_manager_name": "objects"},
        ),
    ]
