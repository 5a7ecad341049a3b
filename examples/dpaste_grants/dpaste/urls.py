from django.urls import path

from snippets import views

urlpatterns = [
    path("", views.index, name="index"),
    path("<int:snippet_id>/", views.detail, name="detail"),
    path("api/snippets", views.api_snippets),
    path("api/snippets/<int:snippet_id>", views.api_snippet),
    path("api/snippets/<int:snippet_id>/delete", views.api_delete),
]
