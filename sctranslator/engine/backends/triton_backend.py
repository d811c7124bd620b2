"""The `triton` backend: predictions from a Triton Inference Server over gRPC or HTTP.

Built once per worker process from a BackendSpec (see registry.get_backend) and shared by the
worker's threads, so it is thread-safe: a gRPC client is shared (one HTTP/2 channel), HTTP
clients (gevent-based, not thread-safe) are one per thread. Requests go through a pool of
`max_in_flight` threads. Each request is retried with exponential back-off while the server is
unavailable (restarting, model loading, connection reset) until `retry_timeout_s` has passed.

Before the first batch the backend waits for the server and model to be ready and checks that
the served model is the one the plan was built for (tensor names, dtypes, L and P, weights'
fingerprint), raising ServerError on any mismatch.

Options (BackendSpec.options): url (required), model_name ("sctranslator"), model_version (""),
protocol ("grpc" or "http"), max_in_flight (4), max_batch (cells per request; default the
server's max_batch_size), timeout_s (per request, 60), ready_timeout_s (60), retry_timeout_s
(120), backoff_s (0.25), max_backoff_s (5), check_fingerprint (True). Both timeouts hold on gRPC
as on HTTP: every gRPC call carries a deadline, and readiness probes end by the ready deadline.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import numpy as np

from sctranslator.engine.backends.base import BackendSpec, Batch, no_embeddings
from sctranslator.engine.backends.capabilities import BackendCapabilities
from sctranslator.errors import ServerError
from sctranslator.export.triton_config import (
    PARAM_CONFIG,
    PARAM_FINGERPRINT,
    PARAM_MAX_GENES,
    PARAM_MAX_PROTEINS,
)
from sctranslator.graph.contract import GENES, INPUTS, OUTPUT, OUTPUT_NAME, PROTEINS
from sctranslator.options import TRITON_PROTOCOLS

log = logging.getLogger(__name__)
T = TypeVar("T")
PROTOCOLS = TRITON_PROTOCOLS
# Message fragments of failures that pass once the server is back (gRPC status names included).
_TRANSIENT = ("unavailable", "connection", "connect", "reset", "refused", "broken pipe", "socket closed",
              "not ready", "unknown model", "is not found", "stopping", "shutting down", "deadline", "timed out",
              "timeout", "resource_exhausted", "goaway",
              # A stopping server cancels what is in flight, and its backend stub dies with it.
              "cancelled", "not healthy", "stub process")


@dataclass(frozen=True)
class TritonConnection:
    """How the triton backend reaches its server: the ``backend_options`` of ``backend="triton"``.

    Parameters
    ----------
    url : str
        The server, HOST:PORT (gRPC 8001 or HTTP 8000 by default); a grpc:// or http(s):// prefix
        is dropped.
    model_name : str
        The served model.
    model_version : str
        Its version; "" for the server's latest.
    protocol : {'grpc', 'http'}
        The client protocol.
    max_in_flight : int
        Concurrent requests.
    max_batch : int or None
        Cells per request; None: the served model's max_batch_size.
    timeout_s : float
        Seconds one request may take before it is retried.
    ready_timeout_s : float
        Seconds to wait for the server and model to report ready.
    retry_timeout_s : float
        Seconds a failing request is retried before ServerError.
    backoff_s : float
        First wait between retries, in seconds (doubled each time).
    max_backoff_s : float
        Longest wait between retries, in seconds.
    check_fingerprint : bool
        Refuse a served model whose weight fingerprint differs from the job's model.
    """

    url: str
    model_name: str = "sctranslator"
    model_version: str = ""
    protocol: str = "grpc"
    max_in_flight: int = 4
    max_batch: int | None = None
    timeout_s: float = 60.0
    ready_timeout_s: float = 60.0
    retry_timeout_s: float = 120.0
    backoff_s: float = 0.25
    max_backoff_s: float = 5.0
    check_fingerprint: bool = True

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> TritonConnection:
        """The connection from ``backend_options``; None values keep their defaults.

        Parameters
        ----------
        options : dict
            Field name -> value; ``url`` is required.

        Returns
        -------
        TritonConnection
            The checked settings.

        Raises
        ------
        ServerError
            An unknown option, no url, an unknown protocol, or max_in_flight < 1.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ServerError(f"unknown triton backend option(s) {unknown}; known: {sorted(known)}")
        if not options.get("url"):
            raise ServerError("the triton backend needs a server address: --url HOST:PORT "
                              "(gRPC 8001 or HTTP 8000 by default)")
        values = {key: value for key, value in options.items() if value is not None}
        made = cls(**values)
        if made.protocol not in PROTOCOLS:
            raise ServerError(f"unknown Triton protocol {made.protocol!r}; choose one of {PROTOCOLS}")
        if made.max_in_flight < 1:
            raise ServerError(f"max_in_flight must be >= 1, got {made.max_in_flight}")
        return made

    @property
    def address(self) -> str:
        """The server as tritonclient takes it: HOST:PORT without a scheme."""
        for scheme in ("grpc://", "http://", "https://"):
            if self.url.startswith(scheme):
                return self.url[len(scheme):].rstrip("/")
        return self.url.rstrip("/")


def is_transient(error: BaseException) -> bool:
    """Whether a failed request may pass if retried once the server is back.

    Parameters
    ----------
    error : BaseException
        What the request raised.

    Returns
    -------
    bool
        True for connection resets, timeouts and "unavailable" answers.
    """
    from tritonclient.utils import InferenceServerException

    if isinstance(error, ConnectionError | TimeoutError):
        return True
    if isinstance(error, InferenceServerException):
        text = f"{error.status()} {error.message()}".lower()
        return any(fragment in text for fragment in _TRANSIENT)
    # geventhttpclient / gevent raise OSError subclasses and their own errors on a dropped socket.
    module = type(error).__module__
    return isinstance(error, OSError) or module.startswith(("geventhttpclient", "gevent"))


def _grpc_channel_args() -> list[tuple[str, Any]]:
    """tritonclient's defaults plus a short reconnect back-off.

    gRPC's own reconnect back-off grows to 120 s: after a server restart the channel could stay
    in TRANSIENT_FAILURE long after the server is back. Our retry loop does the backing off.
    """
    from tritonclient.grpc import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    return [("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
            ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
            ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
            ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
            ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000)]


def _close_quietly(client: Any) -> None:
    try:
        client.close()
    except Exception:  # noqa: BLE001 - the socket may already be broken; closing is best effort
        log.debug("closing a Triton client failed", exc_info=True)


def _describe(error: BaseException) -> str:
    from tritonclient.utils import InferenceServerException

    if isinstance(error, InferenceServerException):
        return f"{error.status() or 'error'}: {error.message()}"
    return f"{type(error).__name__}: {error}"


class TritonBackend:
    """The Backend protocol against a Triton server: the served graph runs there, batches go by request.

    Building it waits for the server and model to be ready and checks the served model against the
    job's (inputs, outputs, L, P and the weight fingerprint).

    Parameters
    ----------
    options : TritonConnection
        Where the server is and how to talk to it.
    expected_genes : int or None
        The job's model L; None skips the check.
    expected_proteins : int or None
        The job's model P; None skips the check.
    expected_fingerprint : str or None
        The job's model weight fingerprint; None skips the check.

    Raises
    ------
    ServerError
        The server or model is not ready by ``ready_timeout_s``, or serves a different model.
    MissingExtraError
        tritonclient is not installed.
    """

    name = "triton"
    capabilities = BackendCapabilities(
        embeddings=False,  # the served graph ends at the predictions
        windows_at_once=True,  # when the served model takes a protein axis of any multiple of P (check_model)
        precisions={"cpu": ("fp32",)},  # "cpu": no device here; the server runs its graph on its own devices
        options=tuple(f.name for f in fields(TritonConnection)), required_options=("url",), remote=True,
        settings_hint="a Triton server runs the graph it was exported with, on the devices its repository names: "
                      "export it with `sctranslator export triton --precision / --kind gpu`, and drop --precision "
                      "and --device here")
    supports_embeddings = capabilities.embeddings

    def __init__(self, options: TritonConnection, expected_genes: int | None = None,
                 expected_proteins: int | None = None, expected_fingerprint: str | None = None):
        self.options = options
        self._local = threading.local()
        self._shared_client: Any = None
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=options.max_in_flight, thread_name_prefix="triton-request")
        self.retries = 0  # requests retried, for logs and tests
        self.windows_at_once = False  # set by check_model: the model takes all protein windows in one request
        self.wait_until_ready()
        self.max_batch, self.genes, self.proteins = self.check_model(expected_genes, expected_proteins,
                                                                      expected_fingerprint)

    @classmethod
    def from_spec(cls, spec: BackendSpec) -> TritonBackend:
        """Build the backend for `spec`: its ``options`` are the connection, its model the expectation.

        Parameters
        ----------
        spec : BackendSpec
            ``spec.options`` holds the connection (see `TritonConnection`); ``spec.model``, when
            given, is checked against the served model.

        Returns
        -------
        TritonBackend
            A backend whose server is ready and serves the job's model.

        Raises
        ------
        ServerError
            As `TritonConnection.from_dict` and the class.
        """
        options = TritonConnection.from_dict(spec.options)
        if spec.model is None:
            return cls(options)
        from sctranslator.model.identity import model_fingerprint

        model = spec.load_model()
        fingerprint = model_fingerprint(model) if options.check_fingerprint else None
        return cls(options, model.config.max_genes, model.config.max_proteins, fingerprint)

    # -- clients ---------------------------------------------------------------------------------------
    def _new_client(self, timeout_s: float | None = None) -> Any:
        """A client; HTTP clients carry their timeout (`timeout_s`, default the per-request timeout_s)."""
        if self.options.protocol == "grpc":
            import tritonclient.grpc as grpc_module

            return grpc_module.InferenceServerClient(self.options.address, channel_args=_grpc_channel_args())
        import tritonclient.http as http_module

        timeout_s = self.options.timeout_s if timeout_s is None else timeout_s
        return http_module.InferenceServerClient(self.options.address, connection_timeout=timeout_s,
                                                 network_timeout=timeout_s)

    def _timeout(self) -> dict[str, float]:
        """The per-call deadline keyword: gRPC calls take it per call (HTTP clients carry their own).

        Without it a gRPC call to a server that accepts the connection and never answers waits forever.
        """
        return {"client_timeout": self.options.timeout_s} if self.options.protocol == "grpc" else {}

    def client(self) -> Any:
        """This thread's client (gRPC: one client shared by all threads).

        Returns
        -------
        tritonclient.grpc.InferenceServerClient or tritonclient.http.InferenceServerClient
            A client of the configured protocol.
        """
        if self.options.protocol == "grpc":
            with self._clients_lock:
                if self._shared_client is None:
                    self._shared_client = self._new_client()
                    self._clients.append(self._shared_client)
                return self._shared_client
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._new_client()
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _drop_client(self) -> None:
        """Forget this thread's HTTP client after a connection error; the next call opens a fresh one."""
        if self.options.protocol == "http" and getattr(self._local, "client", None) is not None:
            client, self._local.client = self._local.client, None
            _close_quietly(client)

    def _with_retries(self, what: str, call: Callable[[], T]) -> T:
        """Run `call`, retrying transient failures with exponential back-off until retry_timeout_s."""
        deadline = time.monotonic() + self.options.retry_timeout_s
        delay = self.options.backoff_s
        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except ServerError:
                raise
            except Exception as exc:  # tritonclient, grpc and gevent raise many types
                if not is_transient(exc):
                    raise ServerError(f"Triton server {self.options.address} failed {what}: {_describe(exc)}") from exc
                if time.monotonic() + delay > deadline:
                    raise ServerError(f"Triton server {self.options.address} still unavailable after {attempt} "
                                      f"attempts over {self.options.retry_timeout_s:.0f} s ({what}): "
                                      f"{_describe(exc)}") from exc
                self.retries += 1
                log.warning("Triton %s failed (%s); retry %d in %.2f s", what, _describe(exc), attempt, delay)
                self._drop_client()
                time.sleep(delay)
                delay = min(delay * 2, self.options.max_backoff_s)

    # -- start-up checks -------------------------------------------------------------------------------
    def wait_until_ready(self) -> None:
        """Wait (up to ready_timeout_s) for the server and the model to report ready."""
        options = self.options
        deadline = time.monotonic() + options.ready_timeout_s
        last = "no answer"
        while True:
            # Every probe ends by the deadline, also against a server that accepts and never answers.
            remaining = max(0.1, min(options.timeout_s, deadline - time.monotonic()))
            probe = None
            try:
                if options.protocol == "grpc":
                    client, timeout = self.client(), {"client_timeout": remaining}
                else:  # a short-lived client with the remaining time as its timeout
                    client = probe = self._new_client(remaining)
                    timeout = {}
                if not client.is_server_ready(**timeout):
                    last = "server not ready"
                elif not client.is_model_ready(options.model_name, options.model_version, **timeout):
                    last = f"model {options.model_name!r} not ready (is it in the server's repository?)"
                else:
                    return
            except Exception as exc:  # connection refused and friends while the server starts
                last = _describe(exc)
            finally:
                if probe is not None:
                    _close_quietly(probe)
            if time.monotonic() >= deadline:
                raise ServerError(f"Triton server {options.address} ({options.protocol}) not ready after "
                                  f"{options.ready_timeout_s:.0f} s: {last}. Start it (sctranslator serve MODEL) "
                                  "or check --url, --protocol and --model-name.")
            time.sleep(0.5)

    def _metadata_and_config(self) -> tuple[dict[str, Any], dict[str, Any]]:
        client, name, version = self.client(), self.options.model_name, self.options.model_version
        if self.options.protocol == "grpc":
            metadata = client.get_model_metadata(name, version, as_json=True, **self._timeout())
            config = client.get_model_config(name, version, as_json=True, **self._timeout()).get("config", {})
        else:
            metadata = client.get_model_metadata(name, version)
            config = client.get_model_config(name, version)
        return metadata, config

    def check_model(self, genes: int | None, proteins: int | None,
                    fingerprint: str | None) -> tuple[int, int, int]:
        """Check that the served model takes ``(B, L)`` genes and ``(B, P)`` proteins as the job's model.

        Parameters
        ----------
        genes : int or None
            The expected L; None accepts the served one.
        proteins : int or None
            The expected P; None accepts the served one.
        fingerprint : str or None
            The expected weight fingerprint; None skips the check.

        Returns
        -------
        tuple of int
            (max cells per request, L, P) of the served model.

        Raises
        ------
        ServerError
            The served model is not an sctranslator model or differs from the job's.
        """
        metadata, config = self._with_retries("reading the model metadata", self._metadata_and_config)
        where = f"model {self.options.model_name!r} on {self.options.address}"
        tensors = {t["name"]: t for t in [*metadata.get("inputs", []), *metadata.get("outputs", [])]}
        problems = []
        widths: dict[str, dict[str, int]] = {GENES: {}, PROTEINS: {}}  # axis -> tensor -> served width
        for spec in (*INPUTS, OUTPUT):  # the graph contract, graph/contract.py
            tensor = tensors.get(spec.name)
            if tensor is None:
                problems.append(f"no tensor {spec.name!r}")
            elif tensor["datatype"] != spec.triton_type:
                problems.append(f"{spec.name} is {tensor['datatype']}, expected {spec.triton_type}")
            elif len(tensor["shape"]) != 2 or int(tensor["shape"][0]) != -1:
                problems.append(f"{spec.name} has shape {tensor['shape']}, expected [-1, {spec.axis}] (a batch axis)")
            elif int(tensor["shape"][1]) == -1 and spec.axis == GENES:
                problems.append(f"{spec.name} has shape {tensor['shape']}, expected a fixed L")
            else:
                # -1 on the protein axis: the model takes any multiple of P (all windows at once).
                widths[spec.axis][spec.name] = int(tensor["shape"][1])
        for axis, by_name in widths.items():
            if len(set(by_name.values())) > 1:
                problems.append(f"its tensors disagree on {axis}: {by_name}")
        if problems:
            raise ServerError(f"{where} is not an sctranslator model: " + "; ".join(problems)
                              + f". Served tensors: {sorted(tensors)}")
        served_genes = next(iter(widths[GENES].values()))
        served_proteins = next(iter(widths[PROTEINS].values()))
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        windows_at_once = served_proteins == -1
        if windows_at_once:
            if not parameters.get(PARAM_MAX_PROTEINS):
                raise ServerError(f"{where} takes a protein axis of any width but does not say its P "
                                  f"({PARAM_MAX_PROTEINS} parameter); re-export it with sctranslator export triton")
            served_proteins = int(parameters[PARAM_MAX_PROTEINS])
        for key, label, served in ((PARAM_MAX_GENES, "L", served_genes), (PARAM_MAX_PROTEINS, "P", served_proteins)):
            if parameters.get(key) and int(parameters[key]) != served:
                problems.append(f"its config parameters say {label}={parameters[key]} but its tensors take {served}")
        if genes is not None and served_genes != genes:
            problems.append(f"it takes L={served_genes} genes per cell, the plan's model takes {genes}")
        if proteins is not None and served_proteins != proteins:
            problems.append(f"it predicts P={served_proteins} proteins per window, the plan's model {proteins}")
        served_fingerprint = parameters.get(PARAM_FINGERPRINT)
        if fingerprint and served_fingerprint and served_fingerprint != fingerprint:
            problems.append(f"its weights differ from the plan's model (fingerprint {served_fingerprint[:12]} vs "
                            f"{fingerprint[:12]})")
        if problems:
            raise ServerError(f"{where} does not match the model of this job: " + "; ".join(problems)
                              + ". Serve the same model (sctranslator export triton MODEL) or pass that model.")
        if not parameters.get(PARAM_CONFIG):
            log.warning("%s carries no sctranslator parameters; only tensor shapes were checked", where)
        else:
            log.info("Triton %s: L=%d, P=%d, config %s", where, served_genes, served_proteins,
                     json.loads(parameters[PARAM_CONFIG]).get("dim", "?"))
        server_max = int(config.get("max_batch_size") or 0)
        max_batch = self.options.max_batch or server_max or 64
        if server_max:
            max_batch = min(max_batch, server_max)
        self.windows_at_once = windows_at_once
        return max_batch, served_genes, served_proteins

    # -- inference -------------------------------------------------------------------------------------
    def _infer_once(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        options = self.options
        client = self.client()
        if options.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        request = []
        for spec in INPUTS:
            array = inputs[spec.name]
            tensor = module.InferInput(spec.name, list(array.shape), spec.triton_type)
            if options.protocol == "http":
                tensor.set_data_from_numpy(array, binary_data=True)
            else:
                tensor.set_data_from_numpy(array)
            request.append(tensor)
        if options.protocol == "grpc":
            outputs = [module.InferRequestedOutput(OUTPUT_NAME)]
            result = client.infer(options.model_name, request, options.model_version, outputs=outputs,
                                  **self._timeout())
        else:
            outputs = [module.InferRequestedOutput(OUTPUT_NAME, binary_data=True)]
            result = client.infer(options.model_name, request, options.model_version, outputs=outputs)
        predictions = result.as_numpy(OUTPUT_NAME)
        expected = (inputs["values"].shape[0], inputs["protein_ids"].shape[1])
        if predictions is None or predictions.shape != expected:
            shape = None if predictions is None else predictions.shape
            raise ServerError(f"Triton model {options.model_name!r} returned {OUTPUT_NAME} of shape {shape}, "
                              f"expected {expected}")
        return predictions.astype(np.float32, copy=False)

    def _infer(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self._with_retries(f"inference on {inputs['values'].shape[0]} cells",
                                  lambda: self._infer_once(inputs))

    def predict(self, batch: Batch) -> np.ndarray:
        """Predict a batch on the server, requests in flight concurrently.

        One request per chunk of max_batch cells carries all W protein windows (the served model runs
        the encoder at most once per request); a model that takes one window of P proteins (an export
        from an earlier version) gets one request per window and chunk.

        Parameters
        ----------
        batch : Batch
            The model inputs of B cells.

        Returns
        -------
        numpy.ndarray
            float32 ``(B, W * P)`` predictions.

        Raises
        ------
        ServerError
            The batch's L or P differs from the served model's, or a request still fails after
            ``retry_timeout_s``.
        """
        cells, genes = batch.values.shape
        if genes != self.genes or batch.protein_ids.shape[1] != self.proteins:
            raise ServerError(f"the batch has L={genes}, P={batch.protein_ids.shape[1]}; the served model takes "
                              f"L={self.genes}, P={self.proteins}")
        windows = batch.protein_ids.shape[0]
        requests = [batch.all_windows()] if self.windows_at_once else [batch.expanded(w) for w in range(windows)]
        futures = []
        for inputs in requests:
            for lo in range(0, cells, self.max_batch):
                chunk = {name: array[lo:lo + self.max_batch] for name, array in inputs.items()}
                futures.append(self._pool.submit(self._infer, chunk))
        parts = [future.result() for future in futures]
        per_request = len(parts) // len(requests)
        columns = [np.concatenate(parts[r * per_request:(r + 1) * per_request], axis=0) for r in range(len(requests))]
        return np.concatenate(columns, axis=1)

    def predict_with_embeddings(self, batch: Batch, embeddings: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """Predictions and, when asked, cell embeddings (this backend has none).

        Parameters
        ----------
        batch : Batch
            The model inputs of B cells.
        embeddings : bool
            Whether embeddings are asked for; this backend refuses them.

        Returns
        -------
        tuple of (numpy.ndarray, None)
            The predictions, float32 ``(B, W * P)``, and None.

        Raises
        ------
        BackendError
            `embeddings` is True.
        """
        return no_embeddings(self, batch, embeddings)

    def close(self) -> None:
        """Wait for requests in flight, then close every client."""
        self._pool.shutdown(wait=True)
        with self._clients_lock:
            for client in self._clients:
                try:
                    client.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    log.debug("closing a Triton client failed", exc_info=True)
            self._clients.clear()
            self._shared_client = None
