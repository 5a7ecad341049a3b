"""The paste-bin's own test suite (`python manage.py test`): what a user
does, through Django's test client."""

import datetime
import json

from django.test import TestCase

from .models import Snippet


class SnippetTests(TestCase):
    def post(self, path, body):
        return self.client.post(path, json.dumps(body), content_type="application/json")

    def test_a_new_snippet_is_listed_and_shown_with_its_author(self):
        created = self.post("/api/snippets", {"content": "print('hi <b>')", "author": "ada"})
        self.assertEqual(created.status_code, 201)
        snippet_id = created.json()["id"]
        self.assertEqual(self.client.get(f"/api/snippets/{snippet_id}").json()["content"], "print('hi <b>')")
        self.assertContains(self.client.get("/"), f"#{snippet_id}</a> by ada")
        self.assertContains(self.client.get(f"/{snippet_id}/"), "print(&#x27;hi &lt;b&gt;&#x27;)")

    def test_an_empty_snippet_is_refused(self):
        self.assertEqual(self.post("/api/snippets", {"content": "  "}).status_code, 400)
        self.assertEqual(self.client.get("/api/snippets/999999").status_code, 404)

    def test_only_the_delete_token_deletes_a_snippet(self):
        created = self.post("/api/snippets", {"content": "x = 1", "author": "bob"}).json()
        path = f"/api/snippets/{created['id']}/delete"
        self.assertEqual(self.post(path, {"token": "guess"}).status_code, 403)
        self.assertEqual(self.client.get(f"/api/snippets/{created['id']}").status_code, 200)
        self.assertEqual(self.post(path, {"token": created["delete_token"]}).json(), {"deleted": True})
        self.assertEqual(self.client.get(f"/api/snippets/{created['id']}").status_code, 404)

    def test_snippets_by_month_and_weekday(self):
        snippet_id = self.post("/api/snippets", {"content": "y = 2"}).json()["id"]
        today = Snippet.objects.get(id=snippet_id).created
        listed = self.client.get("/api/snippets", {"weekday": today.isoweekday() % 7 + 1}).json()
        self.assertIn(snippet_id, [s["id"] for s in listed["snippets"]])
        self.assertIn(today.strftime("%Y-%m"), listed["months"])
        other_day = (today + datetime.timedelta(days=1)).isoweekday() % 7 + 1
        listed = self.client.get("/api/snippets", {"weekday": other_day}).json()
        self.assertNotIn(snippet_id, [s["id"] for s in listed["snippets"]])
