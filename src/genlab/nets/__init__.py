"""Plain nn.Modules: generators, discriminators, VAE and VQGAN encoders/decoders, the VampPrior."""

from genlab.nets.biggan import BigGANDiscriminator, BigGANGenerator
from genlab.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from genlab.nets.hvae import HierarchicalDecoder, HierarchicalEncoder
from genlab.nets.mlp import MLPDiscriminator, MLPGenerator
from genlab.nets.r3gan import R3GANDiscriminator, R3GANGenerator
from genlab.nets.resnet import ResNetDiscriminator, ResNetGenerator
from genlab.nets.stylegan2 import StyleGAN2Discriminator, StyleGAN2Generator
from genlab.nets.taming import TamingDecoder, TamingEncoder
from genlab.nets.vae import ConvDecoder, ConvEncoder

__all__ = [
    "BigGANDiscriminator",
    "BigGANGenerator",
    "ConvDecoder",
    "ConvEncoder",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "HierarchicalDecoder",
    "HierarchicalEncoder",
    "MLPDiscriminator",
    "MLPGenerator",
    "R3GANDiscriminator",
    "R3GANGenerator",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "StyleGAN2Discriminator",
    "StyleGAN2Generator",
    "TamingDecoder",
    "TamingEncoder",
]
