"""The networks: the U-Net (diffusers' UNet2DModel keys) and loading models to sample from."""

from .unet import UNet, UNetConfig

__all__ = ["UNet", "UNetConfig"]
