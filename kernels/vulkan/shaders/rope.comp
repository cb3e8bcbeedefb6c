// RoPE in place, float arithmetic for the angles' sin / cos: rope.glsl.
#version 450
#include "common.glsl"
#include "rope.glsl"
