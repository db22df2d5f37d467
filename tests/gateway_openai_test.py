#!/usr/bin/env python3
"""gateway_openai_test.py - modserve-gateway driven by the official `openai`
Python client (PyPI) against a real local cluster (redis-server, broker,
one encoder, two text actors: `modserve up`) running the generated "demo"
model.

What it shows (docs/gateway.md, issue 5):
  * plain and streaming chat with an image, completions (plain and streaming),
    models; greedy answers equal what the broker gives `modserve submit`;
  * bad requests come back as OpenAI-shaped errors with the right status
    (400 / 401 / 404 / 413 / 429) as the client's exception classes;
  * a client that hangs up mid-stream gets its request cancelled at the
    broker (finish "abort" in /metrics, nothing left in flight);
  * /metrics parses as Prometheus text (prometheus_client's parser when
    installed, promtool when installed) and its counters move;
  * /health is 200, and turns 503 naming the encode stage once the only
    encoder is killed.

Run by ctest (label integration) or by hand:
    python3 tests/gateway_openai_test.py [--bin-dir build/bin] [-v]
Exits 77 (ctest SKIP_RETURN_CODE) when the openai package is missing.
"""
import argparse
import base64
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

SKIP = 77

try:
    import openai
except ImportError:
    print("SKIP: the openai package is not installed (pip install openai)")
    sys.exit(SKIP)

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(HERE)
MODEL = "demo"
KEY = "sk-modserve-test"

CTX = {}  # cluster, gateways, paths (set up once in setUpModule)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url, timeout=10):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text, name, labels=None):
    """Value of one sample in a Prometheus text, 0.0 if absent."""
    want = name + ("{" + ",".join('%s="%s"' % kv for kv in labels.items()) + "}" if labels else "")
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0


def image_url(name):
    with open(os.path.join(SOURCE, "tests", "data", "images", name), "rb") as f:
        data = base64.b64encode(f.read()).decode()
    mime = {"jpg": "jpeg", "png": "png", "webp": "webp"}[name.rsplit(".", 1)[1]]
    return "data:image/%s;base64,%s" % (mime, data)


def start_gateway(extra, port):
    b = CTX["bin"]
    log = open(os.path.join(CTX["tmp"], "gateway-%d.log" % port), "ab")
    p = subprocess.Popen([CTX["gateway"], "--model-name", MODEL,
                          "--listen", "127.0.0.1:%d" % port, "--broker", CTX["front"],
                          "--redis", CTX["redis"]] + extra,
                         stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return p
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise RuntimeError("gateway on port %d did not start" % port)


def setUpModule():
    b = CTX["bin"]
    tmp = CTX["tmp"] = tempfile.mkdtemp(prefix="ms-gw-test-")
    models = os.path.join(tmp, "models")
    subprocess.run([os.path.join(b, "modserve-mkmodel"), "--preset", "demo", "--out", models],
                   check=True, stdout=subprocess.DEVNULL)
    run = CTX["run"] = os.path.join(tmp, "run")
    up = subprocess.run([os.path.join(b, "modserve"), "up", "--model",
                         os.path.join(models, "demo-lm.gguf"), "--mmproj",
                         os.path.join(models, "demo-mmproj.gguf"), "--dir", run,
                         "--port-base", "auto", "--count", "enc=1", "--timeout", "120",
                         "--bin-dir", b], capture_output=True, text=True, timeout=180)
    if up.returncode != 0:
        raise RuntimeError("modserve up failed:\n" + up.stdout + up.stderr)
    out = up.stdout
    CTX["front"] = re.search(r"front (tcp://[^,\s]+)", out).group(1)
    CTX["redis"] = re.search(r"^\s*redis\s+-\s+\d+\s+-\s+(\S+)", out, re.M).group(1)
    CTX["encoders"] = [int(m.group(1)) for m in re.finditer(r"^\s*enc-\d+\s+encode\s+(\d+)", out,
                                                             re.M)]
    assert len(CTX["encoders"]) == 1, out
    CTX["port"] = free_port()
    CTX["gw"] = start_gateway([], CTX["port"])
    CTX["port2"] = free_port()  # with an API key, a small body limit and one request at a time
    CTX["gw2"] = start_gateway(["--api-key", KEY, "--max-body-bytes", "4096",
                                "--max-inflight", "1"], CTX["port2"])
    CTX["base"] = "http://127.0.0.1:%d" % CTX["port"]
    CTX["client"] = openai.OpenAI(base_url=CTX["base"] + "/v1", api_key="unused", max_retries=0,
                                  timeout=60)


def tearDownModule():
    for k in ("gw", "gw2"):
        p = CTX.get(k)
        if p and p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    if CTX.get("run"):
        subprocess.run([os.path.join(CTX["bin"], "modserve"), "down", "--dir", CTX["run"],
                        "--force"], capture_output=True, timeout=60)
    if CTX.get("tmp") and not CTX.get("keep"):
        shutil.rmtree(CTX["tmp"], ignore_errors=True)
    elif CTX.get("tmp"):
        print("kept", CTX["tmp"])


def client():
    return CTX["client"]


IMAGE_CHAT = [{"role": "user", "content": [
    {"type": "image_url", "image_url": {"url": None}},
    {"type": "text", "text": "Describe this image."}]}]


def image_chat(name="sample.jpg"):
    msgs = json.loads(json.dumps(IMAGE_CHAT))
    msgs[0]["content"][0]["image_url"]["url"] = image_url(name)
    return msgs


class T1Generation(unittest.TestCase):
    def test_models(self):
        ids = [m.id for m in client().models.list().data]
        self.assertEqual(ids, [MODEL])
        self.assertEqual(client().models.retrieve(MODEL).owned_by, "modserve")

    def test_chat_with_image(self):
        r = client().chat.completions.create(model=MODEL, messages=image_chat(), max_tokens=12,
                                             temperature=0)
        self.assertEqual(r.object, "chat.completion")
        self.assertEqual(len(r.choices), 1)
        c = r.choices[0]
        self.assertEqual(c.message.role, "assistant")
        self.assertIsInstance(c.message.content, str)
        self.assertIn(c.finish_reason, ("stop", "length"))
        self.assertLessEqual(r.usage.completion_tokens, 12)
        self.assertGreater(r.usage.completion_tokens, 0)
        self.assertEqual(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens)
        t = r.model_extra["timings"]  # where the time went, per stage
        self.assertGreater(t["image_tokens"], 0)
        self.assertGreater(t["prefill_ms"], 0)
        for k in ("queue_ms", "preprocess_ms", "encode_ms", "transfer_ms", "decode_ms"):
            self.assertGreaterEqual(t[k], 0)  # encode may be 0: the encoder caches features
        # greedy: the same answer as the broker gives a direct producer
        sub = subprocess.run([os.path.join(CTX["bin"], "modserve"), "submit", "--broker",
                              CTX["front"], "--image",
                              os.path.join(SOURCE, "tests/data/images/sample.jpg"),
                              "-p", "Describe this image.", "-n", "12", "-q"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(sub.returncode, 0, sub.stderr)
        self.assertEqual(c.message.content, sub.stdout.rstrip("\n"))
        CTX["greedy_image_answer"] = c.message.content

    def test_chat_stream_with_image(self):
        stream = client().chat.completions.create(
            model=MODEL, messages=image_chat(), max_tokens=12, temperature=0, stream=True,
            stream_options={"include_usage": True})
        chunks = list(stream)
        self.assertGreaterEqual(len(chunks), 3)
        self.assertEqual(chunks[0].choices[0].delta.role, "assistant")
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        finishes = [ch.choices[0].finish_reason for ch in chunks
                    if ch.choices and ch.choices[0].finish_reason]
        self.assertEqual(len(finishes), 1)
        self.assertIn(finishes[0], ("stop", "length"))
        last = chunks[-1]
        self.assertEqual(last.choices, [])
        self.assertGreater(last.usage.completion_tokens, 0)
        self.assertTrue(all(ch.usage is None for ch in chunks[:-1]))
        r = client().chat.completions.create(model=MODEL, messages=image_chat(), max_tokens=12,
                                             temperature=0)
        self.assertEqual(text, r.choices[0].message.content)

    def test_chat_several_images_and_system(self):
        msgs = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": [
                    {"type": "text", "text": "Compare"},
                    {"type": "image_url", "image_url": {"url": image_url("j_333x517.jpg")}},
                    {"type": "image_url", "image_url": {"url": image_url("p_40x30_rgb.png")}},
                    {"type": "image_url", "image_url": {"url": image_url("w_40x30_lossy.webp")}}]}]
        r = client().chat.completions.create(model=MODEL, messages=msgs, max_tokens=5, seed=3,
                                             temperature=0.8, top_p=0.9, stop=["\n\n"])
        self.assertGreater(r.model_extra["timings"]["image_tokens"], 0)
        self.assertGreater(r.usage.prompt_tokens, r.model_extra["timings"]["image_tokens"])

    def test_completions(self):
        r = client().completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8,
                                        temperature=0)
        self.assertEqual(r.object, "text_completion")
        self.assertIsInstance(r.choices[0].text, str)
        self.assertEqual(r.usage.completion_tokens, 8)  # a random model rarely stops by itself
        s = client().completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8,
                                        temperature=0, stream=True)
        text = "".join(ch.choices[0].text for ch in s if ch.choices)
        self.assertEqual(text, r.choices[0].text)


class T2Errors(unittest.TestCase):
    def assertError(self, ctx, status, code=None, param=None):
        e = ctx.exception
        self.assertEqual(e.status_code, status, e)
        body = e.body  # the "error" object of {"error": {...}}
        self.assertIsInstance(body, dict, e)
        for k in ("message", "type", "param", "code"):
            self.assertIn(k, body)
        self.assertTrue(body["message"])
        if code:
            self.assertEqual(body["code"], code, body)
        if param:
            self.assertEqual(body["param"], param, body)

    def test_unknown_model(self):
        with self.assertRaises(openai.NotFoundError) as c:
            client().chat.completions.create(model="gpt-4o", messages=[
                {"role": "user", "content": "hi"}])
        self.assertError(c, 404, "model_not_found", "model")
        with self.assertRaises(openai.NotFoundError):
            client().models.retrieve("gpt-4o")

    def test_bad_parameters(self):
        msgs = [{"role": "user", "content": "hi"}]
        cases = [dict(n=2), dict(temperature=5), dict(top_p=0), dict(max_tokens=0),
                 dict(stop=["a"] * 9), dict(presence_penalty=1.0), dict(logprobs=True)]
        for kw in cases:
            with self.subTest(kw=kw):
                with self.assertRaises(openai.BadRequestError) as c:
                    client().chat.completions.create(model=MODEL, messages=msgs, **kw)
                self.assertError(c, 400, param=list(kw)[0])
        with self.assertRaises(openai.BadRequestError) as c:
            client().chat.completions.create(model=MODEL, messages=msgs,
                                             extra_body={"max_token": 5})
        self.assertError(c, 400, "unknown_parameter", "max_token")
        with self.assertRaises(openai.BadRequestError) as c:
            client().chat.completions.create(model=MODEL, messages=[])
        self.assertError(c, 400, param="messages")

    def test_bad_images(self):
        def send(url):
            return client().chat.completions.create(model=MODEL, messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                             {"type": "text", "text": "?"}]}])
        with self.assertRaises(openai.BadRequestError) as c:
            send("https://example.com/cat.png")
        self.assertError(c, 400, "remote_image_disabled")
        self.assertIn("remote image URLs are disabled", c.exception.body["message"])
        with self.assertRaises(openai.BadRequestError) as c:
            send("data:image/png;base64,not*base64")
        self.assertError(c, 400, "invalid_image")
        with self.assertRaises(openai.BadRequestError) as c:
            send("data:image/png;base64," + base64.b64encode(b"hello world").decode())
        self.assertError(c, 400, "invalid_image")
        with self.assertRaises(openai.APIStatusError) as c:
            send(image_url("bomb_100000x100000.png"))
        self.assertError(c, 413, "image_too_large")

    def test_api_key_body_limit_and_overload(self):
        base = "http://127.0.0.1:%d/v1" % CTX["port2"]
        bad = openai.OpenAI(base_url=base, api_key="wrong", max_retries=0)
        with self.assertRaises(openai.AuthenticationError) as c:
            bad.models.list()
        self.assertError(c, 401, "invalid_api_key")
        good = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=60)
        self.assertEqual([m.id for m in good.models.list().data], [MODEL])
        with self.assertRaises(openai.APIStatusError) as c:  # a 5 KB prompt, limit 4096
            good.completions.create(model=MODEL, prompt="x" * 5000, max_tokens=1)
        self.assertError(c, 413, "request_too_large")
        # one request at a time: a second one while a long stream runs is a 429
        s = good.completions.create(model=MODEL, prompt="Once", max_tokens=3000, stream=True)
        next(iter(s))
        with self.assertRaises(openai.RateLimitError) as c:
            good.completions.create(model=MODEL, prompt="Twice", max_tokens=1)
        self.assertError(c, 429, "overloaded")
        s.close()


class T3Disconnect(unittest.TestCase):
    def test_disconnect_mid_stream_cancels(self):
        _, before = http_get(CTX["base"] + "/metrics")
        aborted = metric(before, "modserve:request_success_total", {"finished_reason": "abort"})
        s = client().chat.completions.create(model=MODEL, messages=image_chat(), max_tokens=3000,
                                             temperature=0.7, stream=True)
        it = iter(s)
        got = 0
        for ch in it:
            if ch.choices and ch.choices[0].delta.content:
                got += 1
                if got == 3:
                    break
        s.close()  # hang up: the gateway must cancel the request at the broker
        deadline = time.time() + 10
        while True:
            _, m = http_get(CTX["base"] + "/metrics")
            _, h = http_get(CTX["base"] + "/health")
            health = json.loads(h)
            done = (metric(m, "modserve:request_success_total", {"finished_reason": "abort"})
                    == aborted + 1 and metric(m, "modserve:num_requests_running") == 0
                    and health["broker"].get("in_flight") == 0)
            if done or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertTrue(done, "not freed after the disconnect:\n%s\n%s" % (h, m))
        gen = metric(m, "modserve:generation_tokens_total")
        self.assertLess(gen, 3000 + metric(before, "modserve:generation_tokens_total"))


class T4Metrics(unittest.TestCase):
    def test_metrics_parse_and_move(self):
        st, before = http_get(CTX["base"] + "/metrics")
        self.assertEqual(st, 200)
        client().completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0)
        client().chat.completions.create(model=MODEL, messages=image_chat("j_64x48_420.jpg"),
                                         max_tokens=4, temperature=0)
        st, after = http_get(CTX["base"] + "/metrics")
        self.assertEqual(st, 200)
        for name in ("modserve:prompt_tokens_total", "modserve:generation_tokens_total",
                     "modserve:e2e_request_latency_seconds_count",
                     "modserve:time_to_first_token_seconds_count",
                     "modserve:request_queue_time_seconds_count"):
            self.assertGreater(metric(after, name), metric(before, name), name)
        self.assertGreaterEqual(metric(after, "modserve:generation_tokens_total")
                                - metric(before, "modserve:generation_tokens_total"), 8)
        enc = {"stage": "encode", "modality": "image"}
        self.assertGreater(metric(after, "modserve:stage_latency_seconds_count", enc),
                           metric(before, "modserve:stage_latency_seconds_count", enc))
        self.assertEqual(metric(after, "modserve:stage_instances",
                                {"stage": "encode", "state": "up"}), 1)
        self.assertEqual(metric(after, "modserve:stage_instances",
                                {"stage": "decode", "state": "up"}), 2)
        self.assertEqual(metric(after, "modserve:broker_up"), 1)
        try:
            from prometheus_client.parser import text_string_to_metric_families
        except ImportError:
            text_string_to_metric_families = None
        if text_string_to_metric_families:
            fams = {f.name: f for f in text_string_to_metric_families(after)}
            self.assertEqual(fams["modserve:time_to_first_token_seconds"].type, "histogram")
            self.assertEqual(fams["modserve:prompt_tokens"].type, "counter")
            self.assertEqual(fams["modserve:num_requests_running"].type, "gauge")
        else:
            print("(prometheus_client not installed: parser check skipped)", file=sys.stderr)
        promtool = shutil.which("promtool")
        if promtool:
            p = subprocess.run([promtool, "check", "metrics"], input=after, capture_output=True,
                               text=True)
            # 0: clean; 3: lint problems only. vLLM-style names contain ':', which promtool's
            # linter flags (it parses them fine); anything else is a failure.
            problems = [l for l in (p.stdout + p.stderr).splitlines()
                        if l.strip() and "should not contain ':'" not in l]
            self.assertIn(p.returncode, (0, 3), p.stdout + p.stderr)
            self.assertEqual(problems, [])
        else:
            print("(promtool not installed: promtool check skipped)", file=sys.stderr)


class T5Health(unittest.TestCase):
    def test_health_turns_503_without_the_encoder(self):
        st, body = http_get(CTX["base"] + "/health")
        self.assertEqual(st, 200, body)
        h = json.loads(body)
        self.assertEqual(h["status"], "ok")
        self.assertEqual(h["stages"]["encode"]["up"], 1)
        os.kill(CTX["encoders"][0], signal.SIGKILL)  # the only encoder
        deadline = time.time() + 15  # its registry entry expires after the 2 s TTL
        while time.time() < deadline:
            st, body = http_get(CTX["base"] + "/health")
            if st == 503:
                break
            time.sleep(0.2)
        self.assertEqual(st, 503, body)
        h = json.loads(body)
        self.assertEqual(h["status"], "unavailable")
        self.assertIn("encode", h["reason"])
        self.assertEqual(h["stages"]["encode"]["up"], 0)
        _, m = http_get(CTX["base"] + "/metrics")
        self.assertEqual(metric(m, "modserve:stage_instances", {"stage": "encode", "state": "up"}),
                         0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", default=os.environ.get("MS_BIN_DIR",
                                                         os.path.join(SOURCE, "build", "bin")))
    ap.add_argument("--gateway", help="the modserve-gateway binary (default: BIN_DIR's; e.g. "
                    "an ASan build's)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    CTX["bin"] = os.path.abspath(a.bin_dir)
    CTX["keep"] = a.keep
    CTX["gateway"] = os.path.abspath(a.gateway or os.path.join(CTX["bin"], "modserve-gateway"))
    for tool in ("modserve", "modserve-mkmodel", "modserve-broker", "modserve-actor"):
        if not os.access(os.path.join(CTX["bin"], tool), os.X_OK):
            print("SKIP: %s not built in %s" % (tool, CTX["bin"]))
            sys.exit(SKIP)
    if not os.access(CTX["gateway"], os.X_OK):
        print("SKIP: %s not built" % CTX["gateway"])
        sys.exit(SKIP)
    if not shutil.which("redis-server"):
        print("SKIP: redis-server not installed")
        sys.exit(SKIP)
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    r = unittest.TextTestRunner(verbosity=2 if a.verbose else 1).run(suite)
    sys.exit(0 if r.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
