"""The demo CLIP: a small quality-aware CLIP made offline, so QASA-VQA's CLIP branch can run for real
without OpenAI's weights (``qasa-vqa demo-clip``).

:mod:`~qasa_vqa.democlip.degrade` damages clips the way video degrades, :mod:`~qasa_vqa.democlip.captions`
describes the damage in words, :mod:`~qasa_vqa.democlip.pairs` films and renders the image-caption pairs,
:mod:`~qasa_vqa.democlip.train` trains an open_clip ``CLIP`` on them with open_clip's contrastive loss,
:mod:`~qasa_vqa.democlip.zeroshot` measures the zero-shot quality readout against a corpus's MOS, and
:mod:`~qasa_vqa.democlip.make` ties them together and writes the self-describing weights file that the
package ships (``clip=demo``). It is a stand-in for exercising the method offline, not OpenAI's CLIP:
the paper's figures need the ``openai`` weights.
"""
