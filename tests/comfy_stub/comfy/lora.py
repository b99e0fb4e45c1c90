"""Stand-in for ``comfy.lora`` (ComfyUI v0.21): the kohya key map of a diffusion model and ``load_lora`` for
plain ``lora_down`` / ``lora_up`` / ``alpha`` LoRAs (patch values are ``("lora", (up, down, alpha))`` tuples
here; the real ones are ``LoRAAdapter`` objects)."""


def model_lora_keys_unet(model, key_map={}):
    for k in model.state_dict().keys():
        if k.startswith("diffusion_model."):
            if k.endswith(".weight"):
                key_lora = k[len("diffusion_model."):-len(".weight")].replace(".", "_")
                key_map["lora_unet_{}".format(key_lora)] = k
                key_map["{}".format(k[:-len(".weight")])] = k
            else:
                key_map["{}".format(k)] = k
    return key_map


def load_lora(lora, to_load, log_missing=True):
    patch_dict = {}
    for x in to_load:
        down, up = lora.get(f"{x}.lora_down.weight"), lora.get(f"{x}.lora_up.weight")
        if down is None or up is None:
            continue
        alpha = lora[f"{x}.alpha"].item() if f"{x}.alpha" in lora else None
        patch_dict[to_load[x]] = ("lora", (up, down, alpha))
    return patch_dict
