// Matrix-vector for up to 1 token, with packed 8-bit integer dot products: matvec.glsl.
#version 450
#define TOKENS 1
#define INTEGER_DOT 1
#include "matvec.glsl"
