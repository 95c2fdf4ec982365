"""Collect a dataset from a spec (the file `ray submit` copies to a cluster's head node).

    python collectors/run_all.py --spec datasets/quickstart.yaml --out runs/quickstart
    ray submit ray_cluster.yaml collectors/run_all.py -- --spec datasets/gato-control.yaml --address auto

It imports only installed code (the cluster YAML installs GatoForge on every node), never files
beside it: `ray submit` copies this one file.
"""

import sys

from collectors.collect import main

if __name__ == "__main__":
    sys.exit(main())
