from proj.celery import app


@app.task
def count_words(text):
    return len(text.split())
