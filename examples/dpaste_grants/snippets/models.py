from django.db import models


class VisibleSnippets(models.Manager):
    """Snippets without their delete token, which the front end may not read
    (pspy.toml): a query that asks for it is refused by the database."""

    def get_queryset(self):
        return super().get_queryset().defer("delete_token")


class Snippet(models.Model):
    content = models.TextField()
    author = models.CharField(max_length=100)
    created = models.DateTimeField(auto_now_add=True)
    delete_token = models.CharField(max_length=64)

    objects = VisibleSnippets()
    with_tokens = models.Manager()   # for the owner (tokens.py)

    class Meta:
        ordering = ["-id"]
        base_manager_name = "objects"

    def __str__(self):
        return f"snippet {self.pk} by {self.author}"
