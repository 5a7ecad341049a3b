from django.db import models


class Paste(models.Model):
    title = models.CharField(max_length=200)
    code = models.TextField()
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self):
        return self.title
