"""The adapter contract: everything an adapter author (inside or outside this repository) imports.

Read :mod:`servingbench.contract.adapter` for the life cycle, and ``docs/adding-an-adapter.md`` for the checklist.
"""

from servingbench.contract.adapter import Adapter, AdapterOptions, Codec, NoOptions, OptionsError
from servingbench.contract.codecs import JsonCodec, as_output, check_status, decode_outputs, encode_inputs
from servingbench.contract.features import CATALOG, CONTRACT_CLAIMS, FEATURES, PROBES, Capability, Feature
from servingbench.contract.helpers import (
    model_entry, path_with_venv, server_env, write_command_file, write_deployment_json,
)
from servingbench.contract.streaming import json_stream_request, ndjson_tokens, sse_tokens
from servingbench.contract.types import (
    AdapterUnavailable, DecodeError, Deployment, LaunchSpec, Ports, ReadyProbe, RequestSpec, RunContext, Secrets,
    UnsupportedDeployment,
)

__all__ = [
    "CATALOG", "CONTRACT_CLAIMS", "FEATURES", "PROBES",
    "Adapter", "AdapterOptions", "AdapterUnavailable", "Capability", "Codec", "DecodeError", "Deployment", "Feature",
    "JsonCodec", "LaunchSpec", "NoOptions", "OptionsError", "Ports", "ReadyProbe", "RequestSpec", "RunContext",
    "Secrets", "UnsupportedDeployment",
    "as_output", "check_status", "decode_outputs", "encode_inputs", "model_entry", "path_with_venv", "server_env",
    "write_command_file", "write_deployment_json", "json_stream_request", "ndjson_tokens", "sse_tokens",
]
