"""Wire contracts: kubelet device plugin v1beta1, plugin registration v1, pod resources v1.

Generated from proto/ by `make proto`; never edit the *_pb2*.py files by hand.
"""
