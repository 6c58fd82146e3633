"""Plain nn.Modules: generators, discriminators, VAE encoders and decoders."""

from genlab.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from genlab.nets.mlp import MLPDiscriminator, MLPGenerator
from genlab.nets.resnet import ResNetDiscriminator, ResNetGenerator
from genlab.nets.vae import ConvDecoder, ConvEncoder

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "MLPDiscriminator",
    "MLPGenerator",
    "ResNetDiscriminator",
    "ResNetGenerator",
]
