"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for tests.

Usage:
    with serve_openai(reply="Hello there") as server:
        backend = InferenceClientBackend(model="m", base_url=server.base_url)
        ...
        server.requests[0].body["messages"]

It speaks just enough of the protocol for real clients (InferenceClient, openai):
POST /v1/chat/completions (or /chat/completions), JSON replies (`n` choices), and
streamed `text/event-stream` replies with `data: {chunk}` events, a final chunk with a
finish_reason and `data: [DONE]`.

With `serve_loras=True` it also plays a vLLM server started with `--enable-lora`:
`GET /v1/models` lists the base model and the loaded adapters,
`POST /v1/load_lora_adapter` / `unload_lora_adapter` change them (or are refused, with
`refuse_adapters`), and a chat request naming an unknown model gets vLLM's 404.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator

Reply = str | Callable[[list[dict[str, Any]]], str]
_PATHS = ("/v1/chat/completions", "/chat/completions")


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]


@dataclass
class FakeOpenAIServer:
    """Behaviour knobs; read by the handler threads on every request."""

    reply: Reply = "Hello from the fake strong model."
    fail_with_status: int | None = None  # answer every request with this status and a JSON error
    error_message: str = "fake server failure"
    fail_after_chunks: int | None = None  # stream this many content chunks, then cut the connection
    malformed_after_chunks: int | None = None  # stream this many content chunks, then a non-JSON event
    delay_s: float = 0.0  # wait before sending the response headers
    chunked: bool = True  # chunked transfer encoding; False gives a close-delimited body
    model: str = "fake-model"
    serve_loras: bool = False  # behave as vLLM with --enable-lora (see the module docstring)
    loras: dict[str, str] = field(default_factory=dict)  # adapter name -> the path it was loaded from
    refuse_adapters: bool = False
    requests: list[RecordedRequest] = field(default_factory=list)

    _httpd: ThreadingHTTPServer | None = field(default=None, init=False, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True  # a handler stuck on a dead client must not block shutdown
        # A short poll interval keeps stop() (which waits for one poll) fast.
        serve = lambda: self._httpd.serve_forever(poll_interval=0.02)  # noqa: E731
        threading.Thread(target=serve, name="fake-openai", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes handlers sleeping in delay_s
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def reply_for(self, messages: list[dict[str, Any]]) -> str:
        return self.reply(messages) if callable(self.reply) else self.reply


@contextmanager
def serve_openai(**config: Any) -> Iterator[FakeOpenAIServer]:
    """Run a FakeOpenAIServer(**config) for the duration of the block."""
    server = FakeOpenAIServer(**config).start()
    try:
        yield server
    finally:
        server.stop()


def closed_port_url() -> str:
    """A base_url where nothing listens, for connection-refused tests."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def split_words(text: str) -> list[str]:
    """Word-sized pieces (word plus following whitespace) that join back to text exactly."""
    return [piece for piece in re.split(r"(?<=\s)(?=\S)", text) if piece]


def _make_handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_ChatHandler):
        fake = server

    return Handler


class _ChatHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # needed for chunked transfer encoding
    fake: FakeOpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep test output clean

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self.close_connection = True
        self.fake.requests.append(RecordedRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, {}))
        if self.path.split("?")[0] == "/v1/models" and self.fake.serve_loras:
            names = [self.fake.model, *self.fake.loras]
            self._send_json(200, {"object": "list", "data": [{"id": name, "object": "model"} for name in names]})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        # One request per connection: pooled keep-alive sockets to a stopped
        # server (or a reused port) would otherwise leak between tests.
        self.close_connection = True
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = {"_raw": raw.decode("utf-8", "replace")}
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.fake.requests.append(RecordedRequest(self.path, headers, body))

        if self.fake.delay_s and self.fake._stopping.wait(self.fake.delay_s):
            return  # server is shutting down; the client gave up long ago
        try:
            self._respond(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # client timed out or closed early; nothing to tell it

    def _respond(self, body: dict[str, Any]) -> None:
        path = self.path.split("?")[0]
        if self.fake.serve_loras and path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            return self._lora(path, body)
        if self.fake.serve_loras and path in _PATHS and body.get("model") not in (self.fake.model, *self.fake.loras):
            message = f"The model `{body.get('model')}` does not exist."
            return self._send_json(404, {"error": {"message": message, "type": "NotFoundError", "code": 404}})
        if path not in _PATHS:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
        elif self.fake.fail_with_status is not None:
            error = {"message": self.fake.error_message, "type": "server_error", "code": self.fake.fail_with_status}
            self._send_json(self.fake.fail_with_status, {"error": error})
        elif body.get("stream"):
            self._stream(body)
        else:
            self._send_json(200, self._completion(body))

    def _words(self, body: dict[str, Any]) -> tuple[list[str], str]:
        words = split_words(self.fake.reply_for(body.get("messages", [])))
        limit = body.get("max_tokens")
        if isinstance(limit, int) and len(words) > limit:
            return words[:limit], "length"  # one "token" per word
        return words, "stop"

    def _lora(self, path: str, body: dict[str, Any]) -> None:
        """vLLM's runtime adapter endpoints (plain-text answers, as vLLM gives)."""
        name = body.get("lora_name", "")
        if path.endswith("/unload_lora_adapter"):
            if self.fake.loras.pop(name, None) is None:
                return self._send_json(404, {"error": {"message": f"The lora adapter '{name}' cannot be found."}})
            return self._send_json(200, {"message": f"Success: LoRA adapter '{name}' removed successfully."})
        if self.fake.refuse_adapters:
            message = f"Loading lora {name} failed: No adapter found for {body.get('lora_path')}"
            return self._send_json(400, {"error": {"message": message, "type": "BadRequestError"}})
        if name in self.fake.loras:
            return self._send_json(400, {"error": {"message": f"The lora adapter '{name}' has already been loaded."}})
        self.fake.loras[name] = body.get("lora_path", "")
        return self._send_json(200, {"message": f"Success: LoRA adapter '{name}' added successfully."})

    def _completion(self, body: dict[str, Any]) -> dict[str, Any]:
        choices, tokens = [], 0
        for index in range(int(body.get("n") or 1)):  # each choice asks `reply` again: a callable may vary
            words, reason = self._words(body)
            tokens += len(words)
            choices.append({"index": index, "message": {"role": "assistant", "content": "".join(words)},
                            "finish_reason": reason})
        usage = {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": 1 + tokens}
        return {**self._envelope("chat.completion"), "choices": choices, "usage": usage}

    def _stream(self, body: dict[str, Any]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        if self.fake.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        words, reason = self._words(body)
        self._event(self._chunk({"role": "assistant", "content": ""}, None))
        for sent, word in enumerate(words):
            if sent == self.fake.fail_after_chunks:
                self.wfile.flush()
                return  # close without the terminating chunk: the client sees a cut stream
            if sent == self.fake.malformed_after_chunks:
                self._write_body(b"data: {this is not json\n\n")
                self._write_body(b"")
                return
            self._event(self._chunk({"content": word}, None))
        self._event(self._chunk({}, reason))
        self._write_body(b"data: [DONE]\n\n")
        self._write_body(b"")  # terminating zero-length chunk

    def _envelope(self, kind: str) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": kind,
            "created": int(time.time()),
            "model": self.fake.model,
            "system_fingerprint": "fake",
        }

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return {**self._envelope("chat.completion.chunk"), "choices": [choice]}

    def _event(self, payload: dict[str, Any]) -> None:
        self._write_body(f"data: {json.dumps(payload)}\n\n".encode())

    def _write_body(self, data: bytes) -> None:
        """Write a body piece; with chunked encoding an empty piece ends the body."""
        if not self.fake.chunked:
            if data:
                self.wfile.write(data)
        else:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send_json(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
