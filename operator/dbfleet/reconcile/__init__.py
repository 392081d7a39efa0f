"""The reconcile loop: observe each cluster, diff against the spec, act; leader lock, retries, reconcilers."""
