"""Networks: MONAI U-Nets built from a typed :class:`NetworkConfig`."""

from medseg.networks.factory import NetworkConfig, build_network, plan_network

__all__ = ["NetworkConfig", "build_network", "plan_network"]
