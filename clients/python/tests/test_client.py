"""Unit tests of tessera_tasks against an in-process fake of the task service.

    python3 -m unittest discover -s clients/python/tests

The fake (a real grpcio server on a Unix socket in a temp dir) records what it receives
and answers with whatever status a test sets up; the real agent is exercised by
tests/tests/e2e/client_python.rs.
"""

import os
import shutil
import sys
import tempfile
import unittest
from concurrent import futures
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402

import tessera_tasks  # noqa: E402
from tessera_tasks._proto import tessera_pb2, tessera_pb2_grpc  # noqa: E402


class FakeTasks(tessera_pb2_grpc.WorkloadTasksServicer):
    def __init__(self):
        self.calls = []  # (method, request, metadata)
        self.fail = {}  # method -> [(code, message)], consumed in order
        self.state = "active"

    def _answer(self, method, request, context):
        self.calls.append((method, request, dict(context.invocation_metadata())))
        queue = self.fail.get(method) or []
        if queue:
            code, message = queue.pop(0)
            context.abort(code, message)
        if method == "BeginTask":
            return tessera_pb2.Task(id="t-1", state=self.state, spiffe_id=request.spiffe_id, reason=request.reason,
                                    scopes=request.scopes, decision=tessera_pb2.PolicyDecision(allowed=True, policies=["p:x"]))
        return tessera_pb2.Task(id=request.id, state=request.outcome, end_reason=request.reason)

    def BeginTask(self, request, context):
        return self._answer("BeginTask", request, context)

    def EndTask(self, request, context):
        return self._answer("EndTask", request, context)


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="tessera-tasks-test-")
        self.sock = os.path.join(self.dir, "api.sock")
        self.fake = FakeTasks()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        tessera_pb2_grpc.add_WorkloadTasksServicer_to_server(self.fake, self.server)
        self.server.add_insecure_port(f"unix:{self.sock}")
        self.server.start()
        self.client = tessera_tasks.TaskClient(f"unix://{self.sock}", timeout=5)

    def tearDown(self):
        self.client.close()
        self.server.stop(None)
        shutil.rmtree(self.dir)

    def test_begin_sends_the_spec_and_the_security_header(self):
        t = self.client.begin("spiffe://example.org/tools/x", reason="why", scopes=["read"], ttl=90)
        self.assertEqual((t.id, t.state, t.active, t.scopes), ("t-1", "active", True, ("read",)))
        self.assertEqual(t.decision.policies, ("p:x",))
        method, req, md = self.fake.calls[0]
        self.assertEqual(method, "BeginTask")
        self.assertEqual((req.spiffe_id, req.reason, req.ttl_seconds), ("spiffe://example.org/tools/x", "why", 90))
        self.assertEqual(md.get("workload.spiffe.io"), "true")

    def test_each_status_becomes_its_typed_error_with_the_message(self):
        cases = [
            (grpc.StatusCode.INVALID_ARGUMENT, tessera_tasks.InvalidArgument),
            (grpc.StatusCode.NOT_FOUND, tessera_tasks.NotFound),
            (grpc.StatusCode.PERMISSION_DENIED, tessera_tasks.PermissionDenied),
            (grpc.StatusCode.FAILED_PRECONDITION, tessera_tasks.FailedPrecondition),
            (grpc.StatusCode.ALREADY_EXISTS, tessera_tasks.AlreadyExists),
            (grpc.StatusCode.RESOURCE_EXHAUSTED, tessera_tasks.ResourceExhausted),
            (grpc.StatusCode.UNAVAILABLE, tessera_tasks.Unavailable),
            (grpc.StatusCode.INTERNAL, tessera_tasks.Internal),
            (grpc.StatusCode.ABORTED, tessera_tasks.StatusError),
        ]
        for code, cls in cases:
            with self.subTest(code=code):
                self.fake.fail["BeginTask"] = [(code, f"policy says no ({code.name})")]
                with self.assertRaises(cls) as cm:
                    self.client.begin("spiffe://example.org/tools/x", reason="r")
                self.assertIs(type(cm.exception), cls)
                self.assertEqual(cm.exception.code, code)
                self.assertEqual(cm.exception.message, f"policy says no ({code.name})")
                self.assertEqual(cm.exception.method, "BeginTask")
                self.assertIsInstance(cm.exception, tessera_tasks.TaskError)

    def test_context_manager_completes_or_fails_and_reraises(self):
        with self.client.task("spiffe://example.org/tools/x", reason="r") as t:
            self.assertEqual(t.id, "t-1")
        end = self.fake.calls[-1][1]
        self.assertEqual((end.id, end.outcome, end.reason), ("t-1", "completed", ""))
        with self.assertRaises(ValueError):
            with self.client.task("spiffe://example.org/tools/x", reason="r"):
                raise ValueError("token=hunter2")
        end = self.fake.calls[-1][1]
        self.assertEqual((end.outcome, end.reason), ("failed", "raised ValueError"))

    def test_context_manager_cancels_a_task_that_never_became_active(self):
        self.fake.state = "pending_approval"
        self.fake.fail["EndTask"] = [(grpc.StatusCode.FAILED_PRECONDITION, "never became active")]
        with self.client.task("spiffe://example.org/tools/x", reason="r") as t:
            self.assertTrue(t.pending)
        outcomes = [c[1].outcome for c in self.fake.calls if c[0] == "EndTask"]
        self.assertEqual(outcomes, ["completed", "cancelled"])

    def test_context_manager_leaves_an_already_ended_task_alone(self):
        self.fake.fail["EndTask"] = [(grpc.StatusCode.FAILED_PRECONDITION, "already ended")] * 2
        with self.client.task("spiffe://example.org/tools/x", reason="r"):
            pass
        self.assertEqual(len([c for c in self.fake.calls if c[0] == "EndTask"]), 2)

    def test_context_manager_reports_an_end_that_did_not_happen(self):
        self.fake.fail["EndTask"] = [(grpc.StatusCode.UNAVAILABLE, "server unreachable")]
        with self.assertRaises(tessera_tasks.Unavailable):
            with self.client.task("spiffe://example.org/tools/x", reason="r"):
                pass

    def test_audiences_are_never_dropped(self):
        if tessera_tasks.supports("audiences"):
            self.client.begin("spiffe://example.org/tools/x", reason="r", audiences=["a", "b"])
            self.assertEqual(list(self.fake.calls[-1][1].audiences), ["a", "b"])
        else:
            with self.assertRaises(tessera_tasks.ConfigError):
                self.client.begin("spiffe://example.org/tools/x", reason="r", audiences=["a"])
            self.assertEqual(self.fake.calls, [], "nothing was sent")

    def test_break_glass_is_sent_only_when_asked(self):
        t = self.client.begin("spiffe://example.org/tools/x", reason="r")
        self.assertFalse(self.fake.calls[-1][1].break_glass)
        self.assertFalse(t.break_glass)
        self.client.begin("spiffe://example.org/tools/x", reason="INC-1 outage", break_glass=True)
        self.assertTrue(self.fake.calls[-1][1].break_glass)

    def test_socket_addresses(self):
        t = tessera_tasks.socket_target
        self.assertEqual(t("unix:///run/a.sock"), "unix:/run/a.sock")
        self.assertEqual(t("unix:/run/a.sock"), "unix:/run/a.sock")
        self.assertEqual(t("/run/a.sock"), "unix:/run/a.sock")
        for bad in ["", "tcp://127.0.0.1:8081", "unix://host/a.sock", "run/a.sock", "unix:///a?b"]:
            with self.subTest(bad=bad), self.assertRaises(tessera_tasks.ConfigError):
                t(bad)

    def test_bad_ttl_is_refused_before_sending(self):
        for bad in [0, -5]:
            with self.subTest(ttl=bad), self.assertRaises(ValueError):
                self.client.begin("spiffe://example.org/tools/x", reason="r", ttl=bad)
        self.assertEqual(self.fake.calls, [])


if __name__ == "__main__":
    unittest.main()
