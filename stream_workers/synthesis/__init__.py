"""The synthesis role: admission and batching, the loop that keeps the engine fed, the synthesizer,
text segmentation. Imports runtime and the engine, never another role."""
