"""Command-line definitions for `sctranslator export {onnx,triton}` and `sctranslator serve`.

Each `define_*` fills an argparse parser and returns the handler, as cli.py's sub-commands do;
the handlers are thin wrappers over export_onnx, export_triton and serve.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from sctranslator.errors import SctranslatorError
from sctranslator.options import INSTANCE_KINDS, PRECISIONS, SERVING_BACKENDS

Handler = Callable[[argparse.Namespace], int]

# The choices come from sctranslator.options (cheap to import; onnx_format would load torch and onnx).
DEFAULT_MODEL_NAME = "sctranslator"
DEFAULT_REPO = Path("sctranslator-triton-repo")


def _onnx_out(args: argparse.Namespace) -> Path:
    """The output file, given as `export onnx MODEL OUT` or `export onnx MODEL --out OUT`."""
    given = [path for path in (args.out, args.out_option) if path is not None]
    if not given:
        raise SctranslatorError("say where the ONNX file goes: sctranslator export onnx MODEL --out FILE.onnx")
    if len(given) == 2 and given[0] != given[1]:
        raise SctranslatorError(f"two output files given ({given[0]} and --out {given[1]}); give one")
    return given[0]


def _run_onnx(args: argparse.Namespace) -> int:
    from sctranslator.export.onnx import export_onnx
    from sctranslator.model import load_model

    out = _onnx_out(args)  # before the (slow) model load
    report = export_onnx(load_model(args.model), out, precision=args.precision, opset=args.opset,
                         validate=not args.no_validate, overwrite=args.overwrite)
    print(report)
    if report.validations:
        worst_abs = max(v.max_abs_error for v in report.validations)
        print(f"max abs error {worst_abs:.3g}, max rel error {report.max_rel_error:.3g} against PyTorch float32 "
              f"(tolerance {report.validations[0].tolerance:g} for {args.precision})")
    return 0


def _run_triton(args: argparse.Namespace) -> int:
    from sctranslator.export.triton import export_triton
    from sctranslator.export.triton_config import ServingSettings
    from sctranslator.model import load_model

    settings = ServingSettings(name=args.name, backend=args.backend, max_batch_size=args.max_batch_size,
                               instances=args.instances, kind=args.kind, dynamic_batching=args.dynamic_batching,
                               preferred_batch_sizes=tuple(args.preferred_batch_sizes or ()),
                               max_queue_delay_us=args.max_queue_delay_us, precision=args.precision,
                               intra_op_threads=args.threads)
    settings.check()  # before the (slow) export
    exported = export_triton(load_model(args.model), args.repo, settings, onnx_path=args.onnx,
                             validate=not args.no_validate, overwrite=args.overwrite)
    print(exported)
    if exported.onnx_report is not None:
        for validation in exported.onnx_report.validations:
            print(f"  {validation}")
    return 0


def define_export(parser: argparse.ArgumentParser) -> Handler:
    """Declare ``export onnx MODEL --out FILE`` (or ``MODEL FILE``) and ``export triton MODEL --repo DIR``.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The ``export`` command's parser.

    Returns
    -------
    callable
        The handler: parsed arguments -> exit status.
    """
    formats = parser.add_subparsers(dest="export_format", required=True, metavar="FORMAT")

    onnx = formats.add_parser("onnx", help="export the encoder and decoder ONNX graphs and check them against PyTorch",
                              description="Export MODEL as two ONNX files (OUT: encoder + translator; OUT's stem + "
                                          ".decoder.onnx beside it: decoder) and report their error against PyTorch.")
    onnx.add_argument("model", help="bundle directory or official .pt checkpoint")
    onnx.add_argument("out", type=Path, nargs="?", help="output .onnx file (or give it as --out)")
    onnx.add_argument("--out", dest="out_option", type=Path, metavar="FILE", help="output .onnx file")
    onnx.add_argument("--precision", default="fp32", choices=PRECISIONS,
                      help="internal compute dtype; graph inputs and outputs stay float32 (one of %(choices)s; "
                      "default: %(default)s)")
    onnx.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's)")
    onnx.add_argument("--no-validate", action="store_true", help="skip the comparison with PyTorch")
    onnx.add_argument("--overwrite", action="store_true", help="replace an earlier export at OUT (nothing else; "
                      "default: off)")
    onnx.add_argument("--quiet", action="store_true", help="no INFO messages, no library warnings (default: off)")
    onnx.set_defaults(export_handler=_run_onnx)

    triton = formats.add_parser("triton", help="write a Triton Inference Server model repository",
                                description="Write models NAME (the client-facing BLS model), NAME_encoder and "
                                            "NAME_decoder (the two ONNX graphs) into REPO.")
    triton.add_argument("model", help="bundle directory or official .pt checkpoint")
    triton.add_argument("--repo", type=Path, required=True, help="model repository directory (created if needed)")
    triton.add_argument("--name", default=DEFAULT_MODEL_NAME, help="model name on the server (default: %(default)s)")
    triton.add_argument("--backend", default="onnxruntime", choices=SERVING_BACKENDS,
                        help="backend of the encoder and decoder models: onnxruntime; tensorrt (its TensorRT GPU "
                             "accelerator); python (onnxruntime inside Triton's Python backend, for builds without "
                             "the ONNX Runtime backend) "
                             "(one of %(choices)s; default: %(default)s)")
    triton.add_argument("--max-batch-size", type=int, default=64,
                        help="most cells per batch the server runs (default: %(default)s)")
    triton.add_argument("--instances", type=int, default=1,
                        help="model instances (per GPU for --kind gpu) (default: %(default)s)")
    triton.add_argument("--kind", choices=INSTANCE_KINDS,
                        help="instance kind (one of %(choices)s; default: gpu, cpu for --backend python)")
    triton.add_argument("--dynamic-batching", action="store_true", help="let Triton merge concurrent requests")
    triton.add_argument("--preferred-batch-sizes", type=int, nargs="+", metavar="N",
                        help="batch sizes the dynamic batcher aims for")
    triton.add_argument("--max-queue-delay-us", type=int,
                        help="longest wait to fill a dynamic batch (microseconds; default: Triton's)")
    triton.add_argument("--precision", default="fp32", choices=PRECISIONS,
                        help="internal compute dtype (one of %(choices)s; default: %(default)s)")
    triton.add_argument("--threads", type=int,
                        help="onnxruntime threads per instance (Python backend; default: onnxruntime's)")
    triton.add_argument("--onnx", type=Path, help="reuse this file from `export onnx` instead of exporting again")
    triton.add_argument("--no-validate", action="store_true", help="skip the comparison with PyTorch")
    triton.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export of model NAME in REPO (nothing else; default: off)")
    triton.add_argument("--quiet", action="store_true", help="no INFO messages, no library warnings (default: off)")
    triton.set_defaults(export_handler=_run_triton)

    def run(args: argparse.Namespace) -> int:
        return int(args.export_handler(args))

    return run


def define_serve(parser: argparse.ArgumentParser) -> Handler:
    """Declare ``serve MODEL``: export a repository and run tritonserver on it (or print the docker command).

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The ``serve`` command's parser.

    Returns
    -------
    callable
        The handler: parsed arguments -> exit status.
    """
    parser.add_argument("model", help="bundle directory or official .pt checkpoint")
    parser.add_argument("--repo", type=Path, default=DEFAULT_REPO, help="model repository (default: %(default)s)")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="model name on the server (default: %(default)s)")
    parser.add_argument("--backend", choices=["python", "onnxruntime"],
                        help="Triton backend (one of %(choices)s; default: python for the pytriton tritonserver "
                        "build, else onnxruntime)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on; 0.0.0.0: every interface (default: %(default)s)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP port (default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: %(default)s)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default: %(default)s)")
    parser.add_argument("--max-batch-size", type=int, default=64,
                        help="most cells per batch the server runs (default: %(default)s)")
    parser.add_argument("--instances", type=int, default=1, help="model instances (default: %(default)s)")
    parser.add_argument("--onnx", type=Path, help="reuse this file from `export onnx` instead of exporting again")

    def run(args: argparse.Namespace) -> int:
        from sctranslator.export.serve import ServeRequest, serve

        serve(ServeRequest(model=args.model, repo=args.repo, name=args.name, backend=args.backend, host=args.host,
                           http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                           max_batch_size=args.max_batch_size, instances=args.instances,
                           onnx_path=args.onnx))
        return 0

    return run
