// Matrix-vector for up to 8 tokens: matvec.glsl.
#version 450
#define TOKENS 8
#include "matvec.glsl"
