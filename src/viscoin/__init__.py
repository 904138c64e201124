"""viscoin: VisCoIN (Parekh et al., ICLR 2025) -- concept-based interpretable image classification
whose concepts are visualised through a pretrained StyleGAN2-ADA generator.

Sub-packages mirror the method's parts: `viscoin.stylegan` (the generator G and its
discriminator, official checkpoint import), ...
"""

__version__ = "0.1.0"
