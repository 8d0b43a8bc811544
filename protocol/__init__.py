"""What rollout/, learner/, reward/ and cluster/ share: the batch types and the weight-sync protocol.

This package imports none of the four; they all import it.
"""
