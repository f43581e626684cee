// Attention overlay: draws an image with an attention map on top, coloured by viridis.
// The CPU twin is `dino_shaders::overlay_pixel` in lib.rs; keep the two in sync.

struct Params {
    // Weight of the colormapped attention over the image, in [0, 1].
    alpha: f32,
    // 1.0 draws the mask outline only where `mask` > 0.5; 0.0 draws the heat map.
    mask_mode: f32,
    _pad0: f32,
    _pad1: f32,
};

@group(0) @binding(0) var image_tex: texture_2d<f32>;
@group(0) @binding(1) var attention_tex: texture_2d<f32>;
@group(0) @binding(2) var tex_sampler: sampler;
@group(0) @binding(3) var<uniform> params: Params;

struct VertexOut {
    @builtin(position) position: vec4<f32>,
    @location(0) uv: vec2<f32>,
};

// One triangle covering the viewport; uv spans [0, 1] over the visible part.
@vertex
fn vs_main(@builtin(vertex_index) index: u32) -> VertexOut {
    let x = f32((index << 1u) & 2u);
    let y = f32(index & 2u);
    var out: VertexOut;
    out.position = vec4<f32>(x * 2.0 - 1.0, 1.0 - y * 2.0, 0.0, 1.0);
    out.uv = vec2<f32>(x, y);
    return out;
}

// Viridis sampled at 9 evenly spaced stops (matplotlib's default colormap, used by the
// official attention PNGs). Keep in sync with VIRIDIS_STOPS in lib.rs.
const STOPS = array<vec3<f32>, 9>(
    vec3<f32>(68.0, 1.0, 84.0),
    vec3<f32>(71.0, 44.0, 122.0),
    vec3<f32>(59.0, 81.0, 139.0),
    vec3<f32>(44.0, 113.0, 142.0),
    vec3<f32>(33.0, 144.0, 141.0),
    vec3<f32>(39.0, 173.0, 129.0),
    vec3<f32>(92.0, 200.0, 99.0),
    vec3<f32>(170.0, 220.0, 50.0),
    vec3<f32>(253.0, 231.0, 37.0),
);

fn viridis(value: f32) -> vec3<f32> {
    let v = clamp(value, 0.0, 1.0) * 8.0;
    let i = min(u32(floor(v)), 7u);
    let t = v - f32(i);
    return mix(STOPS[i], STOPS[i + 1u], t) / 255.0;
}

@fragment
fn fs_main(in: VertexOut) -> @location(0) vec4<f32> {
    let base = textureSample(image_tex, tex_sampler, in.uv).rgb;
    let a = textureSample(attention_tex, tex_sampler, in.uv).r;
    if (params.mask_mode > 0.5) {
        let keep = select(0.0, 1.0, a > 0.5);
        let dimmed = base * (1.0 - params.alpha);
        return vec4<f32>(mix(dimmed, base, keep), 1.0);
    }
    return vec4<f32>(mix(base, viridis(a), params.alpha), 1.0);
}
