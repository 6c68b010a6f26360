from gpuroam.worker.tokenizer import BOS, EOS, clip_tokenizer, clip_vocab


def test_vocabulary_matches_clip() -> None:
    vocab = clip_vocab()
    assert len(vocab) == 49408
    assert (vocab["a</w>"], vocab["photo</w>"], vocab["cat</w>"]) == (320, 1125, 2368)
    assert (vocab[BOS], vocab[EOS]) == (49406, 49407)


def test_tokenizer_gives_stable_diffusion_ids() -> None:
    tokenizer = clip_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_padding_and_truncation_to_77_tokens() -> None:
    tokenizer = clip_tokenizer()
    ids = tokenizer("word " * 200, padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407
    short = tokenizer("cat", padding="max_length", max_length=77).input_ids
    assert short[:3] == [49406, 2368, 49407] and set(short[3:]) == {49407}


def test_sd2_pads_with_exclamation_mark() -> None:
    tokenizer = clip_tokenizer(pad_token="!")
    ids = tokenizer("cat", padding="max_length", max_length=77).input_ids
    assert ids[3] == clip_vocab()["!"]
