"""The Network Service Registry of sriov-nsm (`nsm-registry`): NSM's NetworkServiceRegistry and
NetworkServiceEndpointRegistry over gRPC, an embedded (SQLite) or Kubernetes CRD store, and the
interdomain proxy (pNSR) that answers Find for `service@other-domain` through DNS SRV.

Nothing here imports the rest of nsmgr: the registry is its own process.
"""
