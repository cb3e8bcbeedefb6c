// RoPE in place, double arithmetic for the angles' sin / cos (devices with shaderFloat64):
// rope.glsl.
#version 450
#define HEARTH_ROPE_F64 1
#include "common.glsl"
#include "rope.glsl"
