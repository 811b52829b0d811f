#!/usr/bin/env python3
"""A small berth client in Python: JSON over NATS, nothing else.

It discovers the services ($SRV.PING and $SRV.INFO), runs a container through the
scheduler (berth.v1.sched.run), prints its live output from berth.v1.logs_json.<id>,
waits for its exit code (berth.v1.exec.<node>.wait), removes it
(berth.v1.sched.remove) and exits with the container's code, as `berth run` does.

The container's stdout goes to stdout and its stderr to stderr; the client's own lines
start with "# " on stderr. Written from the README and shared/proto alone.

    berth_client.py [--server nats://127.0.0.1:4222] [--image busybox:latest] [CMD ...]
"""

import argparse
import asyncio
import base64
import json
import secrets
import sys

import nats
from nats.errors import Error as NatsError, TimeoutError as NatsTimeout

JSON = {"Content-Type": "application/json"}
BERTH_SERVICES = ("berth-image-store", "berth-layer-unpacker", "berth-scheduler", "berth-executor")
# How long discovery listens for the replies of every instance on the bus.
DISCOVERY_WINDOW = 1.0


class BerthError(Exception):
    """An error reply: berth's stable code (not_found, invalid, ...) and its message."""

    def __init__(self, subject, code, message):
        super().__init__(f"{subject}: {code}: {message}")
        self.code = code


def note(text):
    print(f"# {text}", file=sys.stderr, flush=True)


async def gather(nc, subject, window=DISCOVERY_WINDOW):
    """Publishes an empty request to a subject every instance answers; returns all replies."""
    inbox = nc.new_inbox()
    replies = []
    sub = await nc.subscribe(inbox)
    await nc.publish(subject, b"", reply=inbox)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + window
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await sub.next_msg(timeout=left)
        except NatsTimeout:
            break
        replies.append(json.loads(msg.data))
    await sub.unsubscribe()
    return replies


async def call(nc, subject, body, timeout):
    """One JSON request; an error reply (NATS micro error headers) raises BerthError."""
    msg = await nc.request(subject, json.dumps(body).encode(), timeout=timeout, headers=JSON)
    reply = json.loads(msg.data) if msg.data else {}
    if msg.headers and "Nats-Service-Error-Code" in msg.headers:
        raise BerthError(subject, reply.get("code", "?"), reply.get("message", msg.headers.get("Nats-Service-Error", "")))
    return reply


def endpoint(infos, service, suffix, node=None):
    """The subject of `service`'s endpoint whose subject ends in `.suffix` (on `node`)."""
    for info in infos:
        if info.get("name") != service:
            continue
        if node is not None and (info.get("metadata") or {}).get("node_id") != node:
            continue
        for ep in info.get("endpoints") or []:
            if ep.get("subject", "").endswith("." + suffix):
                return ep["subject"]
    where = f" on node {node}" if node else ""
    raise SystemExit(f"berth_client: no {service} serves *.{suffix}{where}; is the stack up?")


class LogPrinter:
    """Turns CRI log lines (`<time> <stream> <F|P> <text>`) into output on stdout/stderr."""

    def __init__(self):
        self.next_offset = 0
        self.done = asyncio.Event()

    def chunk(self, chunk):
        if chunk["offset"] < self.next_offset:
            return  # a repeat of what was printed already
        data = base64.b64decode(chunk["data"])
        for line in data.decode("utf-8", "replace").splitlines():
            parts = line.split(" ", 3)
            if len(parts) < 3:
                continue
            stream, tag = parts[1], parts[2]
            text = parts[3] if len(parts) == 4 else ""
            out = sys.stderr if stream == "stderr" else sys.stdout
            out.write(text + ("\n" if tag == "F" else ""))
            out.flush()
        self.next_offset = chunk["offset"] + len(data)
        if chunk["eof"]:
            self.done.set()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="nats://127.0.0.1:4222")
    parser.add_argument("--image", default="busybox:latest")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for each step")
    # Everything from the first non-option on is the container's command, `-c` included.
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="command (default: echo hello from python)")
    args = parser.parse_args()
    if args.cmd[:1] == ["--"]:
        args.cmd = args.cmd[1:]
    args.cmd = args.cmd or ["echo", "hello from python"]

    nc = await nats.connect(args.server, connect_timeout=5, max_reconnect_attempts=0)
    try:
        pongs = await gather(nc, "$SRV.PING")
        names = sorted({p["name"] for p in pongs if p.get("name") in BERTH_SERVICES})
        note(f"ping: {len(pongs)} instances answered: {' '.join(names)}")
        infos = [i for i in await gather(nc, "$SRV.INFO") if i.get("name") in BERTH_SERVICES]
        for info in sorted(infos, key=lambda i: i["name"]):
            meta = info.get("metadata") or {}
            note(f"service {info['name']} {info.get('version', '?')} node={meta.get('node_id', '-')} "
                 f"endpoints={len(info.get('endpoints') or [])}")
        run_subject = endpoint(infos, "berth-scheduler", "run")
        remove_subject = endpoint(infos, "berth-scheduler", "remove")

        # The id is ours, so the live log is subscribed before the container exists and
        # no line can slip by; the same id twice is the same container on a retry.
        cid = secrets.token_hex(32)
        printer = LogPrinter()

        async def on_chunk(msg):
            printer.chunk(json.loads(msg.data))

        logs = await nc.subscribe(f"berth.v1.logs_json.{cid}", cb=on_chunk)
        placed = await call(nc, run_subject, {"id": cid, "create": {"image": args.image, "cmd": args.cmd}},
                            args.timeout)
        node = placed["node_id"]
        note(f"run {cid[:12]} on {node} (pid {placed['pid']})")
        try:
            wait_subject = endpoint(infos, "berth-executor", "wait", node=node)
            exit_ = await call(nc, wait_subject, {"id": cid}, args.timeout)
            # The executor sends the last chunk (eof) once the process is gone.
            try:
                await asyncio.wait_for(printer.done.wait(), args.timeout)
            except asyncio.TimeoutError:
                note("the log's end (eof) did not arrive; output may be cut short")
            await logs.unsubscribe()
            code = exit_["exit_code"]
            note(f"exit code {code}" + (f" ({exit_['error']})" if exit_.get("error") else ""))
        finally:
            removed = await call(nc, remove_subject, {"reference": cid, "force": True}, args.timeout)
            note(f"removed {removed['id'][:12]}")
        return code
    finally:
        await nc.close()


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()) & 0xFF)
    except (BerthError, NatsError, OSError) as err:
        print(f"berth_client: {err}", file=sys.stderr)
        sys.exit(125)
