"""Networks: the Video Swin backbone with GRPB, the VQA head, the CLIP quality branch, QASAModel, checkpoints."""
