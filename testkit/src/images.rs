//! Small real images for upload tests.

/// A real PNG of `width` × `height` (a gradient).
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, width, height);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().expect("PNG header");
        let data: Vec<u8> = (0..width * height)
            .flat_map(|i| [(i % 256) as u8, (i / 7 % 256) as u8, 128])
            .collect();
        writer.write_image_data(&data).expect("PNG data");
    }
    bytes
}
