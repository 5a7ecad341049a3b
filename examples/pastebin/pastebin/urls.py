from django.urls import path

from pastes import views

urlpatterns = [
    path("", views.index, name="index"),
    path("<int:paste_id>/", views.detail, name="detail"),
    path("<int:paste_id>/run", views.run, name="run"),
    path("api/pastes", views.api_pastes),
    path("api/pastes/<int:paste_id>", views.api_paste),
    path("api/pastes/<int:paste_id>/run", views.api_run),
]
