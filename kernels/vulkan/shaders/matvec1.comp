// Matrix-vector for up to 1 token: matvec.glsl.
#version 450
#define TOKENS 1
#include "matvec.glsl"
