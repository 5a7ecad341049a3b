"""Create, list, view and run pastes: HTML pages for a browser and a JSON
API. Running a paste is a call of evaluator.evaluate, which under pspy is
another principal: its failures (too long, killed at a limit, provider
down) come back as pspy errors and are shown as the run's error."""

import json

from django.http import Http404, HttpResponseNotAllowed, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.csrf import csrf_exempt

import evaluator
import pspy

from .models import Paste

MAX_CODE = 64 * 1024


def _evaluate(code):
    """The snippet's result, or why it has none."""
    try:
        return evaluator.evaluate(code)
    except pspy.ServiceTimeout:
        return {"output": "", "error": "stopped: the snippet ran longer than its time limit"}
    except pspy.CallInterrupted as e:
        return {"output": "", "error": f"stopped: {e}"}
    except pspy.ServiceUnavailable:
        return {"output": "", "error": "the evaluator is not running; try again in a moment"}


def _new_paste(title, code):
    """A saved paste, or the message saying why not."""
    title, code = (title or "").strip() or "untitled", code or ""
    if not code.strip():
        return None, "a paste needs some code"
    if len(code) > MAX_CODE or len(title) > 200:
        return None, "that paste is too long"
    return Paste.objects.create(title=title, code=code), None


def index(request):
    error = None
    if request.method == "POST":
        paste, error = _new_paste(request.POST.get("title"), request.POST.get("code"))
        if paste is not None:
            return redirect("detail", paste_id=paste.id)
    return render(request, "pastes/index.html", {"pastes": Paste.objects.all()[:50], "error": error},
                  status=400 if error else 200)


def detail(request, paste_id):
    return render(request, "pastes/detail.html", {"paste": get_object_or_404(Paste, id=paste_id)})


def run(request, paste_id):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    paste = get_object_or_404(Paste, id=paste_id)
    return render(request, "pastes/detail.html", {"paste": paste, "result": _evaluate(paste.code)})


def _as_json(paste, with_code=True):
    out = {"id": paste.id, "title": paste.title, "created": paste.created.isoformat()}
    if with_code:
        out["code"] = paste.code
    return out


def _body(request):
    try:
        body = json.loads(request.body or b"{}")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


@csrf_exempt
def api_pastes(request):
    if request.method == "GET":
        return JsonResponse({"pastes": [_as_json(p, with_code=False) for p in Paste.objects.all()[:50]]})
    if request.method != "POST":
        return HttpResponseNotAllowed(["GET", "POST"])
    body = _body(request)
    if body is None or not isinstance(body.get("code", ""), str) or not isinstance(body.get("title", ""), str):
        return JsonResponse({"error": "send a JSON object with string fields title and code"}, status=400)
    paste, error = _new_paste(body.get("title"), body.get("code"))
    if paste is None:
        return JsonResponse({"error": error}, status=400)
    return JsonResponse(_as_json(paste), status=201)


def api_paste(request, paste_id):
    try:
        return JsonResponse(_as_json(Paste.objects.get(id=paste_id)))
    except Paste.DoesNotExist:
        raise Http404("no such paste") from None


@csrf_exempt
def api_run(request, paste_id):
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    paste = get_object_or_404(Paste, id=paste_id)
    return JsonResponse(_evaluate(paste.code))
