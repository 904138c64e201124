"""Clean-room StyleGAN2-ADA (generator, discriminator) with safe import of NVIDIA's official checkpoints.

    G = load_generator("nets/ffhq")          # our format (folder) or an official .pkl
    img = G(torch.randn(4, G.z_dim))         # from z;  G.synthesis(ws) from W+ [N, num_ws, w_dim] or w [N, w_dim]
"""

from viscoin.stylegan.checkpoint import (
    import_official,
    load_discriminator,
    load_generator,
    load_network,
    save_network,
)
from viscoin.stylegan.config import (
    DiscriminatorConfig,
    GeneratorConfig,
    MappingConfig,
    SynthesisConfig,
)
from viscoin.stylegan.discriminator import Discriminator
from viscoin.stylegan.generator import Generator, z_from_seed
from viscoin.stylegan.official import (
    OfficialNetworks,
    OfficialPickleError,
    UnsafePickleError,
    load_official,
    load_official_network,
)

__all__ = [
    "Discriminator",
    "DiscriminatorConfig",
    "Generator",
    "GeneratorConfig",
    "MappingConfig",
    "OfficialNetworks",
    "OfficialPickleError",
    "SynthesisConfig",
    "UnsafePickleError",
    "import_official",
    "load_discriminator",
    "load_generator",
    "load_network",
    "load_official",
    "load_official_network",
    "save_network",
    "z_from_seed",
]
