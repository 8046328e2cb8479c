#!/usr/bin/env python3
"""Outpost dispatcher: POST /tasks queues a task for the agents, GET /health
answers "ok". Tasks are files under $RUNS_DIR, picked up by the agent runner."""
import json
import os
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer

RUNS = os.environ.get("RUNS_DIR", "/srv/outpost/runs")
PORT = int(os.environ.get("DISPATCHER_PORT", "8700"))


class Handler(BaseHTTPRequestHandler):
    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health":
            self._send(200, {"status": "ok", "queued": len(os.listdir(RUNS))})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        if self.path != "/tasks":
            return self._send(404, {"error": "not found"})
        length = int(self.headers.get("Content-Length", "0"))
        try:
            task = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._send(400, {"error": "body must be JSON"})
        task_id = str(uuid.uuid4())
        task["queued_at"] = time.time()
        with open(os.path.join(RUNS, task_id + ".json"), "w") as f:
            json.dump(task, f)
        self._send(202, {"id": task_id})

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    HTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
