//! Where each simulated device sits: sites of buildings of floors of devices, or groups
//! listed by hand, as MQTT groups.

/// One device of the fleet: its id (unique fleet-wide) and its group path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimulatedDevice {
    /// `sensor-000042`: zero-padded so ids sort in fleet order.
    pub id: String,
    /// `site-1/building-a/floor-3`.
    pub group: String,
}

/// Where a fleet's devices sit: generated from a [`Shape`], or listed group by group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Devices fill floors, floors fill buildings and buildings fill sites, in order, with
    /// generated ids (`sensor-000001`, ...).
    Shape(Shape),
    /// These groups and devices, in this order.
    Groups(Vec<Group>),
}

impl Default for Layout {
    fn default() -> Self {
        Layout::Shape(Shape::default())
    }
}

impl Layout {
    /// The fleet's `devices` devices in fleet order. With [`Layout::Groups`], `devices` is
    /// their total (see [`crate::FleetConfig::validate`]).
    pub fn place(&self, devices: usize) -> Vec<SimulatedDevice> {
        match self {
            Layout::Shape(shape) => shape.layout(devices),
            Layout::Groups(groups) => groups
                .iter()
                .flat_map(|group| {
                    group.ids.iter().map(|id| SimulatedDevice {
                        id: id.clone(),
                        group: group.path.clone(),
                    })
                })
                .collect(),
        }
    }
}

/// A group listed by hand and the devices in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The group path, `hq/building-a/floor-3`: 1 to 8 levels.
    pub path: String,
    /// Its devices' ids, unique across the fleet.
    pub ids: Vec<String>,
}

/// How many of each level the next level up holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Devices on one floor.
    pub devices_per_floor: usize,
    /// Floors in one building.
    pub floors_per_building: usize,
    /// Buildings on one site; sites are added until every device has a place.
    pub buildings_per_site: usize,
}

impl Default for Shape {
    /// 20 devices per floor, 5 floors per building, 4 buildings per site: 400 devices a site.
    fn default() -> Self {
        Shape {
            devices_per_floor: 20,
            floors_per_building: 5,
            buildings_per_site: 4,
        }
    }
}

/// Digits of a device id's number, at least; larger fleets get wider ids.
const ID_DIGITS: usize = 6;

/// The generated id of the device at `index` (0-based) of a fleet of `devices`:
/// `sensor-000042`, zero-padded so ids sort in fleet order.
pub fn device_id(index: usize, devices: usize) -> String {
    let width = ID_DIGITS.max(devices.to_string().len());
    format!("sensor-{:0width$}", index + 1)
}

/// The layout of a fleet of `devices` in the default [`Shape`], filling floors, buildings and
/// then sites in order, with as many sites as needed.
pub fn layout(devices: usize) -> Vec<SimulatedDevice> {
    Shape::default().layout(devices)
}

impl Shape {
    /// The layout of a fleet of `devices` in this shape. Every level must hold at least one.
    pub fn layout(self, devices: usize) -> Vec<SimulatedDevice> {
        (0..devices)
            .map(|index| SimulatedDevice {
                id: device_id(index, devices),
                group: self.group_of(index),
            })
            .collect()
    }

    /// The group of the device at `index` (0-based) in fleet order.
    fn group_of(self, index: usize) -> String {
        let floor_slot = index / self.devices_per_floor.max(1);
        let floor = floor_slot % self.floors_per_building.max(1);
        let building_slot = floor_slot / self.floors_per_building.max(1);
        let building = building_slot % self.buildings_per_site.max(1);
        let site = building_slot / self.buildings_per_site.max(1);
        format!(
            "site-{}/building-{}/floor-{}",
            site + 1,
            building_letters(building),
            floor + 1
        )
    }
}

/// `a`..`z`, then `aa`, `ab`, ... (bijective base 26), so any number of buildings gets a name.
fn building_letters(index: usize) -> String {
    let mut letters = Vec::new();
    let mut rest = index + 1;
    while rest > 0 {
        rest -= 1;
        letters.push(char::from(b'a' + (rest % 26) as u8));
        rest /= 26;
    }
    letters.iter().rev().collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashSet};

    use super::*;

    #[test]
    fn lays_out_exactly_the_devices_asked_for_with_unique_ids() {
        for devices in [1, 19, 20, 400, 401, 1000] {
            let fleet = layout(devices);
            assert_eq!(fleet.len(), devices);
            let ids: HashSet<_> = fleet.iter().map(|device| device.id.as_str()).collect();
            assert_eq!(ids.len(), devices);
        }
        let fleet = layout(1000);
        assert_eq!(fleet[0].id, "sensor-000001");
        assert_eq!(fleet[41].id, "sensor-000042");
        assert_eq!(layout(1_234_567)[0].id, "sensor-0000001");
    }

    #[test]
    fn fills_floors_then_buildings_then_sites() {
        let fleet = layout(1000);
        assert_eq!(fleet[0].group, "site-1/building-a/floor-1");
        assert_eq!(fleet[19].group, "site-1/building-a/floor-1");
        assert_eq!(fleet[20].group, "site-1/building-a/floor-2");
        assert_eq!(fleet[99].group, "site-1/building-a/floor-5");
        assert_eq!(fleet[100].group, "site-1/building-b/floor-1");
        assert_eq!(fleet[399].group, "site-1/building-d/floor-5");
        assert_eq!(fleet[400].group, "site-2/building-a/floor-1");
        assert_eq!(fleet[999].group, "site-3/building-b/floor-5");
    }

    #[test]
    fn every_floor_holds_the_shapes_number_of_devices() {
        let mut per_group: BTreeMap<String, usize> = BTreeMap::new();
        for device in layout(1000) {
            *per_group.entry(device.group).or_default() += 1;
        }
        assert_eq!(per_group.len(), 50);
        assert!(per_group.values().all(|&count| count == 20));
    }

    #[test]
    fn names_buildings_beyond_z() {
        assert_eq!(building_letters(0), "a");
        assert_eq!(building_letters(25), "z");
        assert_eq!(building_letters(26), "aa");
        assert_eq!(building_letters(27), "ab");
        assert_eq!(building_letters(26 + 26 * 26), "aaa");
    }
}
