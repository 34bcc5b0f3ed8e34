from django.http import JsonResponse
from proj.celery import app

from .tasks import count_words


def start_count(request):
    result = count_words.delay(request.GET.get("text", ""))
    return JsonResponse({"task_id": result.id})


def result(request, task_id):
    res = app.AsyncResult(task_id)
    return JsonResponse({"state": res.state, "value": res.result if res.ready() else None})
