"""SAM's mask decoder with images and prompts paired 1:1.

``MaskDecoder.predict_masks`` repeats every image embedding once per prompt
(``repeat_interleave``), which is right for many prompts on one image but turns B images with
their B prompts into B^2 masks. SAM-SP has exactly one prompt per image, so this module runs the
same weights with the batch paired: image i attends to prompt i only.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder

# SamSP asks for one mask per prompt: mask token 0, SAM's single-mask output.
SINGLE_MASK_TOKEN = 0


def decode_paired(
    decoder: MaskDecoder,
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse_embeddings: torch.Tensor,
    dense_embeddings: torch.Tensor,
    detail: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Single-mask prediction for each (image, prompt) pair.

    Arguments:
      image_embeddings: [B,C,h,w] from the image encoder
      image_pe: [1,C,h,w] dense positional encoding (``prompt_encoder.get_dense_pe()``)
      sparse_embeddings: [B,N,C] point/box embeddings (N may be 0)
      dense_embeddings: [B,C,h,w] mask-prompt (or no-mask) embeddings
      detail: [B,C/8,r*h,r*w] detail-branch features (``samsp.detail``; r = 4 or 8), added to
        the upscaled features before the hypernetwork product; None = SAM's decoder as is

    Returns mask logits [B,1,4h,4w] (or [B,1,8h,8w] with r = 8 detail) and predicted IoU [B,1];
    without ``detail`` identical to
    ``decoder(image_embeddings[i:i+1], image_pe, sparse[i:i+1], dense[i:i+1], False)`` per image.
    """
    batch = image_embeddings.shape[0]
    if sparse_embeddings.shape[0] != batch or dense_embeddings.shape[0] != batch:
        raise ValueError(
            f"paired decoding needs one prompt per image: {batch} images, "
            f"{sparse_embeddings.shape[0]} sparse and {dense_embeddings.shape[0]} dense prompts"
        )
    # Output tokens (IoU token + mask tokens) lead the prompt tokens: [B, 1+T+N, C].
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
    tokens = torch.cat([output_tokens, sparse_embeddings.to(output_tokens.dtype)], dim=1)

    src = image_embeddings + dense_embeddings  # [B,C,h,w]
    pos_src = image_pe.expand(batch, -1, -1, -1)
    _, channels, height, width = src.shape

    # hs: [B, tokens, C]; src: [B, h*w, C]
    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_token_out = hs[:, 1 + SINGLE_MASK_TOKEN, :]  # [B,C]

    src = src.transpose(1, 2).reshape(batch, channels, height, width)
    upscaled = decoder.output_upscaling(src)  # [B, C/8, 4h, 4w]
    if detail is not None:
        if detail.shape[-2:] != upscaled.shape[-2:]:  # a stride-2 branch: double the features
            upscaled = F.interpolate(upscaled, detail.shape[-2:], mode="bilinear",
                                     align_corners=False)
        upscaled = upscaled + detail.to(upscaled.dtype)
    hyper_in = decoder.output_hypernetworks_mlps[SINGLE_MASK_TOKEN](mask_token_out)  # [B, C/8]
    _, up_channels, up_h, up_w = upscaled.shape
    masks = (hyper_in.unsqueeze(1) @ upscaled.reshape(batch, up_channels, up_h * up_w))
    masks = masks.reshape(batch, 1, up_h, up_w)

    iou_pred = decoder.iou_prediction_head(iou_token_out)  # [B, 1+T]
    iou_pred = iou_pred[:, SINGLE_MASK_TOKEN:SINGLE_MASK_TOKEN + 1]
    return masks, iou_pred
