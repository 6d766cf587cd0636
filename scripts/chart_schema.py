#!/usr/bin/env python3
"""Writes helm/llm-sidecar/values.schema.json: the chart's values, with `config` checked
against the sidecar's own config schema (`llm-sidecar schema`, generated from the config
types), so `helm install/upgrade/lint/template` refuse a config the sidecar would refuse
to load for its shape: unknown keys, wrong types, missing required keys.

    scripts/chart_schema.py [--binary target/debug/llm-sidecar] [--check]

--check exits 1 when the committed file differs from what would be written (the tests
run it so the chart cannot drift from the sidecar's schema).
"""
import argparse
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "helm/llm-sidecar/values.schema.json"


def obj(props, required=(), extra=False, **kw):
    s = {"type": "object", "properties": props, "additionalProperties": extra}
    if required:
        s["required"] = list(required)
    s.update(kw)
    return s


STR = {"type": "string"}
BOOL = {"type": "boolean"}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
POS = {"type": "integer", "minimum": 1}
LIST = {"type": "array"}
MAP = {"type": "object"}
ENV_NAME = {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}
PROBE = obj(
    {
        "periodSeconds": POS,
        "failureThreshold": POS,
        "timeoutSeconds": POS,
        "initialDelaySeconds": {"type": "integer", "minimum": 0},
        "successThreshold": POS,
    }
)
UTILIZATION = obj(
    {
        "averageUtilization": {"type": ["integer", "null"], "minimum": 1},
        "container": STR,
    }
)
RESOURCES = obj({"requests": MAP, "limits": MAP, "claims": LIST}, required=["requests", "limits"])


def chart_schema(config):
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "llm-sidecar chart values",
        **obj(
            {
                "global": MAP,
                "nameOverride": STR,
                "fullnameOverride": STR,
                "image": obj(
                    {
                        "repository": {"type": "string", "minLength": 1},
                        "tag": {
                            "type": "string",
                            "not": {"const": "latest"},
                            "description": "Never latest: pin a release.",
                        },
                        "digest": {"type": "string", "pattern": "^(sha256:[0-9a-f]{64})?$"},
                        "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                    },
                    required=["repository", "tag"],
                ),
                "nativeSidecar": BOOL,
                "classicPreStopSeconds": {"type": "integer", "minimum": 0, "maximum": 600},
                "ports": obj({"reverse": PORT, "forward": PORT, "admin": PORT}, required=["reverse", "forward", "admin"]),
                "config": config,
                "existingConfigMap": STR,
                "configMountPath": {"type": "string", "pattern": "^/"},
                "secrets": obj(
                    {
                        "existingSecret": {"type": "string", "minLength": 1},
                        "mountPath": {"type": "string", "pattern": "^/"},
                        "optional": BOOL,
                        "defaultMode": {"type": "integer", "minimum": 0, "maximum": 511},
                    },
                    required=["existingSecret", "mountPath"],
                ),
                "httpsProxy": obj(
                    {
                        "enabled": BOOL,
                        "ca": obj(
                            {
                                "existingSecret": STR,
                                "genCA": BOOL,
                                "genCAValidityDays": POS,
                                "mountPath": {"type": "string", "pattern": "^/"},
                            }
                        ),
                        "trustMountPath": {"type": "string", "pattern": "^/"},
                        "noProxy": {"type": "array", "items": STR},
                    }
                ),
                "appEnv": obj(
                    {
                        "baseUrls": {
                            "type": "object",
                            "propertyNames": ENV_NAME,
                            "additionalProperties": {"type": "string", "pattern": "^/"},
                        },
                        "placeholderKeys": {
                            "type": "object",
                            "propertyNames": ENV_NAME,
                            "additionalProperties": STR,
                        },
                    }
                ),
                "resources": RESOURCES,
                "securityContext": MAP,
                "probes": obj({"startup": PROBE, "readiness": PROBE, "liveness": PROBE}),
                "extraEnv": LIST,
                "extraVolumes": LIST,
                "extraVolumeMounts": LIST,
                "deployment": obj(
                    {
                        "enabled": BOOL,
                        "replicas": {"type": "integer", "minimum": 0},
                        "app": obj(
                            {
                                "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                                "image": obj(
                                    {"repository": STR, "tag": STR, "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}},
                                    required=["repository", "tag"],
                                ),
                                "command": LIST,
                                "args": LIST,
                                "env": LIST,
                                "ports": LIST,
                                "resources": MAP,
                                "securityContext": MAP,
                            }
                        ),
                        "terminationGracePeriodSeconds": {"type": "integer", "minimum": 0},
                        "podAnnotations": MAP,
                        "podLabels": MAP,
                        "nodeSelector": MAP,
                        "tolerations": LIST,
                        "affinity": MAP,
                        "imagePullSecrets": LIST,
                        "automountServiceAccountToken": BOOL,
                    }
                ),
                "service": obj({"enabled": BOOL, "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}}),
                "serviceMonitor": obj({"enabled": BOOL, "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}, "labels": MAP}),
                "dashboard": obj({"enabled": BOOL, "labels": MAP}),
                "networkPolicy": obj(
                    {
                        "enabled": BOOL,
                        "providerPorts": {"type": "array", "items": PORT},
                        "providerCIDRs": {"type": "array", "items": STR},
                        "exceptCIDRs": {"type": "array", "items": STR},
                        "extraEgress": LIST,
                    }
                ),
                "podDisruptionBudget": obj({"enabled": BOOL, "maxUnavailable": {"type": ["integer", "string"]}}),
                "autoscaling": obj(
                    {
                        "enabled": BOOL,
                        "minReplicas": POS,
                        "maxReplicas": POS,
                        "cpu": UTILIZATION,
                        "memory": UTILIZATION,
                        "inFlightRequests": obj(
                            {
                                "enabled": BOOL,
                                "metric": {"type": "string", "minLength": 1},
                                "averageValue": {"type": ["string", "integer"], "pattern": "^[0-9]+(\\.[0-9]+)?[mkMG]?$"},
                            }
                        ),
                        "extraMetrics": {"type": "array", "items": {"type": "object", "required": ["type"]}},
                        "behavior": obj({"scaleDown": MAP, "scaleUp": MAP}),
                    }
                ),
            },
            required=["image", "ports", "config", "secrets"],
        ),
    }


def build(binary):
    sidecar = json.loads(subprocess.run([binary, "schema"], check=True, capture_output=True, text=True).stdout)
    defs = sidecar.pop("$defs")
    config = sidecar
    for k in ("$schema", "title"):
        config.pop(k, None)
    # The chart writes listeners from .Values.ports.
    config["properties"].pop("listeners")
    config["description"] = (
        "The sidecar's config file (docs/configuration.md); listeners are set by the chart "
        "from `ports`."
    )
    schema = chart_schema(config)
    schema["$defs"] = defs
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(ROOT / "target/debug/llm-sidecar"))
    ap.add_argument("--check", action="store_true")
    a = ap.parse_args()
    text = build(a.binary)
    if a.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run scripts/chart_schema.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
