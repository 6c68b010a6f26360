from gpuroam.worker.infotext import infotext
from gpuroam.worker.jobs import BatchKey


def test_infotext_reads_like_a1111() -> None:
    key = BatchKey("txt2img", 512, 768, 20, "DPM++ 2M", "karras", 7.0)
    text = infotext(
        prompt="a cat",
        negative_prompt="blurry",
        key=key,
        seed=42,
        subseed=7,
        subseed_strength=0.0,
        batch_size=2,
        batch_pos=1,
        model_name="tiny",
        model_hash="abc",
    )
    lines = text.split("\n")
    assert lines[0] == "a cat"
    assert lines[1] == "Negative prompt: blurry"
    assert lines[2].startswith(
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x768, "
        "Model hash: abc, Model: tiny, Batch size: 2, Batch pos: 1"
    )
    assert "Variation seed" not in text


def test_infotext_omits_empty_negative_prompt_and_shows_img2img_strength() -> None:
    key = BatchKey("img2img", 64, 64, 10, "Euler", "automatic", 5.5, denoising_strength=0.6)
    text = infotext(
        prompt="p",
        negative_prompt="",
        key=key,
        seed=1,
        subseed=9,
        subseed_strength=0.3,
        batch_size=1,
        batch_pos=0,
        model_name="m",
        model_hash="h",
    )
    assert text.split("\n")[1].startswith("Steps: 10, Sampler: Euler, CFG scale: 5.5, Seed: 1")
    assert "Denoising strength: 0.6" in text and "Variation seed: 9, Variation seed strength: 0.3" in text
