"""The U-Net wing: DDIM inversion, ResBlock and self-attention patches, layer tables and the
negative-prompt guidance of PnP on SD 1.x, SD 2.x and SDXL."""
