"""Stand-in for the per-node part of ComfyUI v0.21's ``execution.validate_inputs`` (what a ``/prompt`` POST goes
through before anything runs), for one V3 node whose linked inputs are not followed upstream.

Faithful to v0.21 in what the pack depends on:

* ``validate_inputs`` counts only when the node class overrides it; ``inspect.getfullargspec`` decides which
  inputs it gets: those named in its signature (or all of them when it has ``**kwargs``), and only when the prompt
  holds them (an absent optional input is not passed);
* a linked input (``[node_id, slot]``) reaches it as ``None``;
* widget values are converted (INT / FLOAT / STRING / BOOLEAN) and, unless the input is named in the signature
  (or the signature has ``**kwargs``), checked against min, max and the combo options;
* a result other than True gives one ``custom_validation_failed`` error per input passed to it.
"""
import inspect


def _is_link(value):
    return isinstance(value, list) and len(value) == 2


def validate_node_inputs(node_cls, inputs):
    """Errors (dicts with ``type``, ``message``, ``details``, ``extra_info.input_name``) for ``inputs`` of
    ``node_cls``; [] when valid."""
    schema = node_cls.define_schema()
    declared = {i.id: i for i in schema.inputs}
    from comfy_api.latest.io import ComfyNode

    fn = node_cls.validate_inputs                      # first_real_override: the base's placeholder does not count
    if fn.__func__ is ComfyNode.validate_inputs.__func__:
        fn = None
    named, has_kwargs = [], False
    if fn is not None:
        spec = inspect.getfullargspec(fn)
        named, has_kwargs = spec.args, spec.varkw is not None

    errors, values = [], {}
    for key, spec in declared.items():
        if key not in inputs:
            if not spec.optional:
                errors.append({"type": "required_input_missing", "message": "Required input is missing",
                               "details": key, "extra_info": {"input_name": key}})
            continue
        val = inputs[key]
        if _is_link(val):
            values[key] = None
            continue
        try:
            conv = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}.get(spec.io_type)
            val = conv(val) if conv else val
        except Exception as exc:
            errors.append({"type": "invalid_input_type", "message": f"Failed to convert an input value to a "
                           f"{spec.io_type} value", "details": f"{key}, {val}, {exc}",
                           "extra_info": {"input_name": key}})
            continue
        values[key] = val
        if key in named or has_kwargs:
            continue
        lo, hi = getattr(spec, "min", None), getattr(spec, "max", None)
        if lo is not None and val < lo:
            errors.append({"type": "value_smaller_than_min", "message": f"Value {val} smaller than min of {lo}",
                           "details": key, "extra_info": {"input_name": key}})
            continue
        if hi is not None and val > hi:
            errors.append({"type": "value_bigger_than_max", "message": f"Value {val} bigger than max of {hi}",
                           "details": key, "extra_info": {"input_name": key}})
            continue
        if spec.io_type == "COMBO" and val not in spec.options:
            errors.append({"type": "value_not_in_list", "message": "Value not in list",
                           "details": f"{key}: {val!r} not in {spec.options}", "extra_info": {"input_name": key}})
            continue

    if named or has_kwargs:
        passed = {k: v for k, v in values.items() if k in named or has_kwargs}
        ret = fn(**passed)
        if ret is not True:
            for key in passed:
                details = key if ret is False else f"{key} - {ret}"
                errors.append({"type": "custom_validation_failed", "message": "Custom validation failed for node",
                               "details": details, "extra_info": {"input_name": key}})
    return errors
