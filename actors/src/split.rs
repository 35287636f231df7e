//! `split`: cuts each frame into a grid of tiles, one output port per tile, so each
//! tile can go to its own "device" (Multi-SC, §II-A).
//!
//! Tile `k` (row-major) leaves on port `tile<k>` as part `k` of `rows*cols`, with
//! fields `image` (the tile), `tile` (its rectangle), `frame_size`, `grid_rows`,
//! `grid_cols`, the frame's `name`, and `mask` (the tile of the object mask), `objects`
//! and `box` when the input has them. Only these fields travel on: the tiles do not carry the
//! object slice, which reaches the receiver through its own channel.

use dataflow_engine::{
    BuildContext, Built, Fields, Image, Input, KeyProblem, OutPort, Outputs, Part, Ports, Rect, Role, Stage,
    StageError, StageKind, Value,
};
use dataflow_engine::{Field, FieldType, PortId};
use dataflow_models::composite::tile_rect;
use schemars::JsonSchema;
use serde::Deserialize;

use crate::util::image_field;

/// Keys of `split`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SplitConfig {
    /// `[rows, cols]` of the grid.
    #[serde(default = "default_grid")]
    pub grid: [usize; 2],
}

fn default_grid() -> [usize; 2] {
    [2, 2]
}

/// Most tiles a grid may have.
const MAX_TILES: usize = 64;

/// The `split` kind.
pub struct Split;

struct Run {
    grid: (usize, usize),
    stage: String,
    /// Port `tile<k>` of tile k.
    tiles: Vec<PortId>,
}

/// The frame (or mask) decoded once per frame, then cropped per tile.
enum Plane {
    Rgb(image::RgbImage),
    Gray(image::GrayImage),
}

impl Plane {
    fn of(img: &Image) -> Plane {
        match img.format {
            dataflow_engine::PixelFormat::Gray8 => Plane::Gray(img.to_gray()),
            _ => Plane::Rgb(img.to_rgb()),
        }
    }

    fn crop(&self, r: (u32, u32, u32, u32)) -> Image {
        let (x, y, w, h) = r;
        match self {
            Plane::Gray(g) => Image::from_gray(image::imageops::crop_imm(g, x, y, w, h).to_image()),
            Plane::Rgb(c) => Image::from_rgb(image::imageops::crop_imm(c, x, y, w, h).to_image()),
        }
    }
}

impl Stage for Run {
    fn process(&mut self, input: Input, out: &mut Outputs) -> Result<(), StageError> {
        let Input::Message { msg, .. } = input else {
            return Ok(());
        };
        let img = image_field(&msg, "image", &self.stage)?;
        let size = (img.width, img.height);
        let (rows, cols) = self.grid;
        if rows > img.height as usize || cols > img.width as usize {
            // Some tiles would have no pixels; fail here rather than at the sink.
            return Err(StageError::input(format!(
                "stage `{}`: frame {}: grid = [{rows}, {cols}] is finer than the {}x{} image, so some tiles \
                 would be empty; use at most {} row(s) and {} column(s) for this image, or larger frames",
                self.stage, msg.id, img.width, img.height, img.height, img.width
            )));
        }
        let n = self.grid.0 * self.grid.1;
        let frame = Plane::of(img);
        let mask = msg
            .fields
            .image("mask")
            .filter(|m| (m.width, m.height) == size)
            .map(Plane::of);
        for k in 0..n {
            let r = tile_rect(k, self.grid, size);
            let mut f = Fields::new()
                .with("image", Value::Image(frame.crop(r)))
                .with(
                    "tile",
                    Value::Rect(Rect {
                        x: r.0,
                        y: r.1,
                        width: r.2,
                        height: r.3,
                    }),
                )
                .with(
                    "frame_size",
                    Value::Rect(Rect {
                        x: 0,
                        y: 0,
                        width: size.0,
                        height: size.1,
                    }),
                )
                .with("grid_rows", Value::Number(self.grid.0 as f64))
                .with("grid_cols", Value::Number(self.grid.1 as f64));
            if let Some(m) = &mask {
                f.insert("mask", Value::Image(m.crop(r)));
            }
            // `objects` (from `detect`) and the object's `box` let the captioner name things.
            for key in ["name", "objects", "box"] {
                if let Some(v) = msg.fields.get(key) {
                    f.insert(key, v.clone());
                }
            }
            out.send(
                self.tiles[k],
                msg.derive_part(
                    Part {
                        index: k as u32,
                        count: n as u32,
                    },
                    f,
                ),
            );
        }
        Ok(())
    }
}

impl StageKind for Split {
    type Config = SplitConfig;
    const NAME: &'static str = "split";
    const ROLE: Role = Role::Transform;
    const DOC: &'static str = "Cuts each frame into a grid of tiles; tile k leaves on port `tile<k>`.";

    fn ports(c: &Self::Config) -> Ports {
        // An invalid grid is reported by `validate`; its ports stay few meanwhile.
        let n = c.grid[0].max(1).saturating_mul(c.grid[1].max(1)).min(MAX_TILES);
        Ports {
            outputs: (0..n)
                .map(|k| {
                    // `mask` when the input has one (cropped); `name`, `objects` and
                    // `box` copied from the input when it has them.
                    OutPort::new(&format!("tile{k}"))
                        .with_each(&["image", "mask"], FieldType::Image)
                        .with_each(&["tile", "frame_size", "box"], FieldType::Rect)
                        .with_each(&["grid_rows", "grid_cols"], FieldType::Number)
                        .with_each(&["name", "objects"], FieldType::Text)
                })
                .collect(),
            requires: vec![Field::new("image", FieldType::Image)],
            ..Ports::default()
        }
    }

    fn validate(c: &Self::Config) -> Vec<KeyProblem> {
        if c.grid[0] == 0 || c.grid[1] == 0 || c.grid[0].saturating_mul(c.grid[1]) > MAX_TILES {
            vec![KeyProblem {
                key: "grid",
                message: format!(
                    "`grid` must be [rows, cols] with 1 to {MAX_TILES} tiles, got {:?}",
                    c.grid
                ),
            }]
        } else {
            Vec::new()
        }
    }

    fn build(c: &Self::Config, ctx: &BuildContext) -> Result<Built, StageError> {
        if let Some(p) = Self::validate(c).into_iter().next() {
            return Err(StageError::input(p.message));
        }
        let tiles = (0..c.grid[0] * c.grid[1])
            .map(|k| ctx.output(&format!("tile{k}")))
            .collect::<Result<_, _>>()?;
        Ok(Built::Stage(Box::new(Run {
            grid: (c.grid[0], c.grid[1]),
            stage: ctx.stage.clone(),
            tiles,
        })))
    }
}
