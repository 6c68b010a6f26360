"""The kubernetes provider: one cluster per region (a kubeconfig context each).

`manifests` and `names` build the objects as plain dicts and need no Kubernetes client; the part that
applies them and watches pods (the `kubernetes` extra) lives beside them.
"""
