"""Tiny, randomly initialised components of the real diffusers pipeline classes, built offline (no download), as
diffusers' own pipeline tests build their dummy components: one small module of each kind a pipeline takes, seeded
before each. Every builder returns a pipeline whose progress bar is off; 16 x 16 RGB images, 8 x 8 latents."""
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel, FlowMatchEulerDiscreteScheduler,
                       FluxPipeline, FluxTransformer2DModel, PixArtAlphaPipeline, PixArtSigmaPipeline,
                       PixArtTransformer2DModel, SD3Transformer2DModel, StableDiffusion3Pipeline,
                       StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5Config,
                          T5EncoderModel, T5Tokenizer)

CLIP_VOCAB = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "cat</w>": 3, "dog</w>": 4, "red</w>": 5, "!": 6}
T5_VOCAB = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁a", -1.0), ("▁cat", -2.0), ("▁dog", -2.0),
            ("▁red", -2.0), ("a", -4.0), ("c", -4.0), ("d", -4.0), ("t", -4.0)]
PROMPTS = ["a cat", "a red dog"]


def _clip_tokenizer():
    return CLIPTokenizer(vocab=dict(CLIP_VOCAB), merges=[], model_max_length=8)


def _clip(hidden=16, projection=None, seed=0):
    torch.manual_seed(seed)
    config = CLIPTextConfig(vocab_size=len(CLIP_VOCAB), hidden_size=hidden, intermediate_size=32, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=8, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1, projection_dim=projection or hidden)
    return (CLIPTextModel(config) if projection is None else CLIPTextModelWithProjection(config)).eval()


def _t5(d_model=32, seed=0):
    torch.manual_seed(seed)
    config = T5Config(vocab_size=len(T5_VOCAB), d_model=d_model, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    return T5EncoderModel(config).eval(), T5Tokenizer(vocab=list(T5_VOCAB), extra_ids=0)


def _vae(**kwargs):
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                         norm_num_groups=4, sample_size=16, **kwargs).eval()


def _ddim(**kwargs):
    return DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                         **{"clip_sample": False, **kwargs})  # latents are not clipped (SD's pipeline forces it)


def _done(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd(**scheduler):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=2, norm_num_groups=4)
    return _done(StableDiffusionPipeline(vae=_vae(), text_encoder=_clip(), tokenizer=_clip_tokenizer(),
                                         unet=unet.eval(), scheduler=_ddim(**scheduler), safety_checker=None,
                                         feature_extractor=None, requires_safety_checker=False))


def sdxl(**scheduler):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(8, 16), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
                                projection_class_embeddings_input_dim=8 * 6 + 16, norm_num_groups=4)
    return _done(StableDiffusionXLPipeline(vae=_vae(), text_encoder=_clip(), tokenizer=_clip_tokenizer(),
                                           text_encoder_2=_clip(projection=16, seed=1), tokenizer_2=_clip_tokenizer(),
                                           unet=unet.eval(), scheduler=_ddim(**scheduler)))


def pixart(sigma=False, **scheduler):
    torch.manual_seed(1 if sigma else 0)  # the two classes run the same computation: another draw tells them apart
    transformer = PixArtTransformer2DModel(sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8,
                                           num_attention_heads=2, caption_channels=32, in_channels=4,
                                           cross_attention_dim=16, out_channels=8, attention_bias=True,
                                           activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                                           norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6)
    text, tokenizer = _t5()
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    return _done(cls(tokenizer=tokenizer, text_encoder=text, vae=_vae(), transformer=transformer.eval(),
                     scheduler=_ddim(**scheduler)))


def sd3(**scheduler):
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                        pooled_projection_dim=32, out_channels=4)
    text3, tokenizer3 = _t5()
    return _done(StableDiffusion3Pipeline(
        transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(**{"shift": 3.0, **scheduler}),
        vae=_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_clip(projection=16), tokenizer=_clip_tokenizer(),
        text_encoder_2=_clip(projection=16, seed=1), tokenizer_2=_clip_tokenizer(),
        text_encoder_3=text3, tokenizer_3=tokenizer3))


def flux(**scheduler):
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=16, guidance_embeds=True, axes_dims_rope=(4, 6, 6))
    text2, tokenizer2 = _t5()
    options = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
               "max_image_seq_len": 4096, "shift": 3.0, **scheduler}
    return _done(FluxPipeline(
        transformer=transformer.eval(), scheduler=FlowMatchEulerDiscreteScheduler(**options),
        vae=_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False),
        text_encoder=_clip(), tokenizer=_clip_tokenizer(), text_encoder_2=text2, tokenizer_2=tokenizer2))


def dit(**scheduler):
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                        num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=1000,
                                        norm_num_groups=4)
    return _done(DiTPipeline(transformer=transformer.eval(), vae=_vae(), scheduler=DDIMScheduler(**{"clip_sample": False, **scheduler})))


BUILDERS = {"StableDiffusionPipeline": sd, "StableDiffusionXLPipeline": sdxl, "PixArtAlphaPipeline": pixart,
            "PixArtSigmaPipeline": lambda **kw: pixart(sigma=True, **kw), "StableDiffusion3Pipeline": sd3,
            "FluxPipeline": flux, "DiTPipeline": dit}
