"""The snippets: HTML pages and a JSON API. A new snippet's delete token is
shown once, to its author; deleting checks it in Data (tokens.py), since
the front end may not read it."""

import json
import secrets

from django.http import HttpResponseNotAllowed, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.csrf import csrf_exempt

import tokens

from .models import Snippet

MAX_CONTENT = 64 * 1024


def _as_json(snippet):
    return {"id": snippet.id, "author": snippet.author, "content": snippet.content,
            "created": snippet.created.isoformat()}


def _body(request):
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def index(request):
    snippets = Snippet.objects.all()[:50]
    # Months that have snippets: SQL functions of Django's (django_datetime_trunc).
    months = [m.strftime("%Y-%m") for m in Snippet.objects.datetimes("created", "month", order="DESC")]
    return render(request, "snippets/index.html", {"snippets": snippets, "months": months})


def detail(request, snippet_id):
    return render(request, "snippets/detail.html", {"snippet": get_object_or_404(Snippet, id=snippet_id)})


@csrf_exempt
def api_snippets(request):
    if request.method == "GET":
        snippets = Snippet.objects.all()
        weekday = request.GET.get("weekday")   # 1 (Sunday) to 7, as Django's week_day
        if weekday is not None:
            if not weekday.isdigit() or not 1 <= int(weekday) <= 7:
                return JsonResponse({"error": "weekday is 1 (Sunday) to 7"}, status=400)
            snippets = snippets.filter(created__week_day=int(weekday))
        months = [m.strftime("%Y-%m") for m in Snippet.objects.datetimes("created", "month", order="DESC")]
        return JsonResponse({"snippets": [_as_json(s) for s in snippets[:50]], "months": months})
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "POST"])
    body = _body(request)
    content, author = (body or {}).get("content"), (body or {}).get("author", "anonymous")
    if not isinstance(content, str) or not content.strip() or not isinstance(author, str):
        return JsonResponse({"error": "send a JSON object with string fields content and author"}, status=400)
    if len(content) > MAX_CONTENT or len(author) > 100:
        return JsonResponse({"error": "that snippet is too long"}, status=400)
    token = secrets.token_urlsafe(32)
    snippet = Snippet.objects.create(content=content, author=author.strip() or "anonymous", delete_token=token)
    return JsonResponse(dict(_as_json(snippet), delete_token=token), status=201)


def api_snippet(request, snippet_id):
    return JsonResponse(_as_json(get_object_or_404(Snippet, id=snippet_id)))


@csrf_exempt
def api_delete(request, snippet_id):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    token = (_body(request) or {}).get("token")
    if not isinstance(token, str):
        return JsonResponse({"error": "send a JSON object with a string field token"}, status=400)
    deleted = tokens.delete_snippet(snippet_id, token)
    return JsonResponse({"deleted": deleted}, status=200 if deleted else 403)
