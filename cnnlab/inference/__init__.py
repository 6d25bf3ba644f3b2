"""Using a trained run: rebuild its network, predict on new images, score another folder, export."""
