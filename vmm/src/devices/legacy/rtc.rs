//! The CMOS real-time clock (MC146818), emulated so the guest learns the wall-clock time at boot.
//!
//! Without it a Linux guest spins on the "update in progress" bit of a clock that is not
//! there (every read of a missing port returns 0xff, and each one is a VM exit): that cost
//! 4–6 s of every boot under nested KVM, and the guest then started in 1970. The time
//! registers read the host's clock at the moment of the read; the guest cannot set it
//! (writes to them are ignored, as a container under runc cannot set the host's clock).
//! No interrupts: the update, alarm and periodic interrupts are never raised, which the
//! kernel's `rtc_cmos` driver accepts.

use std::time::{SystemTime, UNIX_EPOCH};

/// The index port; the data port follows it.
pub const RTC_PORT: u16 = 0x70;
/// Ports 0x70 (index) and 0x71 (data).
pub const RTC_PORT_LEN: u64 = 2;

const INDEX_OFFSET: u64 = 0;
const DATA_OFFSET: u64 = 1;

// Register indices.
const SECONDS: u8 = 0x00;
const MINUTES: u8 = 0x02;
const HOURS: u8 = 0x04;
const WEEKDAY: u8 = 0x06;
const DAY_OF_MONTH: u8 = 0x07;
const MONTH: u8 = 0x08;
const YEAR: u8 = 0x09;
const STATUS_A: u8 = 0x0a;
const STATUS_B: u8 = 0x0b;
const STATUS_C: u8 = 0x0c;
const STATUS_D: u8 = 0x0d;
const CENTURY: u8 = 0x32;

/// Status A: 32.768 kHz time base, 1024 Hz rate; bit 7 (update in progress) is never set.
const STATUS_A_DEFAULT: u8 = 0x26;
const STATUS_A_UPDATE_IN_PROGRESS: u8 = 0x80;
/// Status B: 24-hour mode; BCD (bit 2 clear) as a PC's firmware leaves it.
const STATUS_B_DEFAULT: u8 = 0x02;
const STATUS_B_24_HOUR: u8 = 0x02;
const STATUS_B_BINARY: u8 = 0x04;
/// Status D: the clock's battery is good (valid RAM and time).
const STATUS_D_VALID: u8 = 0x80;
/// The index port's bit 7 masks NMIs; it is not part of the index.
const INDEX_MASK: u8 = 0x7f;
const CMOS_BYTES: usize = 128;

/// A wall-clock time as the RTC's registers hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CalendarTime {
    year: u32,
    month: u8,
    day: u8,
    weekday: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl CalendarTime {
    /// The UTC calendar time of `secs` since the Unix epoch.
    fn from_unix(secs: u64) -> Self {
        let days = secs / 86_400;
        let rest = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        CalendarTime {
            year,
            month,
            day,
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            weekday: ((days + 4) % 7 + 1) as u8,
            hour: (rest / 3600) as u8,
            minute: (rest / 60 % 60) as u8,
            second: (rest % 60) as u8,
        }
    }
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01, by counting
/// 400-year eras of 146097 days whose years start on 1 March (so leap days fall last).
fn civil_from_days(days: u64) -> (u32, u8, u8) {
    // Days since 0000-03-01.
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    // Months counted from March: 0 is March, 11 is February.
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u8;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u8;
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year as u32, month, day)
}

/// The CMOS RTC and its 128 bytes of RAM.
pub struct CmosRtc {
    index: u8,
    ram: [u8; CMOS_BYTES],
    /// Where the time comes from: the host's clock, or a fixed one in tests.
    now: Box<dyn Fn() -> u64 + Send>,
}

impl std::fmt::Debug for CmosRtc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CmosRtc")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

impl Default for CmosRtc {
    fn default() -> Self {
        Self::new()
    }
}

impl CmosRtc {
    /// An RTC reading the host's clock.
    pub fn new() -> Self {
        Self::with_clock(Box::new(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        }))
    }

    fn with_clock(now: Box<dyn Fn() -> u64 + Send>) -> Self {
        let mut ram = [0; CMOS_BYTES];
        ram[usize::from(STATUS_A)] = STATUS_A_DEFAULT;
        ram[usize::from(STATUS_B)] = STATUS_B_DEFAULT;
        CmosRtc { index: 0, ram, now }
    }

    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            INDEX_OFFSET => self.index,
            DATA_OFFSET => self.register(self.index),
            _ => 0xff,
        };
        data.fill(value);
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            INDEX_OFFSET => self.index = value & INDEX_MASK,
            DATA_OFFSET => match self.index {
                SECONDS..=YEAR | CENTURY | STATUS_C | STATUS_D => {}
                STATUS_A => {
                    self.ram[usize::from(STATUS_A)] = value & !STATUS_A_UPDATE_IN_PROGRESS;
                }
                index => self.ram[usize::from(index)] = value,
            },
            _ => {}
        }
    }

    fn register(&self, index: u8) -> u8 {
        let status_b = self.ram[usize::from(STATUS_B)];
        let encode = |value: u8| {
            if status_b & STATUS_B_BINARY != 0 {
                value
            } else {
                ((value / 10) << 4) | (value % 10)
            }
        };
        let time = || CalendarTime::from_unix((self.now)());
        match index {
            SECONDS => encode(time().second),
            MINUTES => encode(time().minute),
            HOURS => {
                let hour = time().hour;
                if status_b & STATUS_B_24_HOUR != 0 {
                    encode(hour)
                } else {
                    // 12-hour mode: 12, 1..11 with bit 7 for PM.
                    let pm = if hour >= 12 { 0x80 } else { 0 };
                    encode(match hour % 12 {
                        0 => 12,
                        h => h,
                    }) | pm
                }
            }
            WEEKDAY => encode(time().weekday),
            DAY_OF_MONTH => encode(time().day),
            MONTH => encode(time().month),
            YEAR => encode((time().year % 100) as u8),
            CENTURY => encode((time().year / 100) as u8),
            STATUS_C => 0,
            STATUS_D => STATUS_D_VALID,
            index => self.ram[usize::from(index)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-04 01:23:45 UTC, a Friday.
    const FRIDAY: u64 = 1_796_347_425;

    fn rtc_at(secs: u64) -> CmosRtc {
        CmosRtc::with_clock(Box::new(move || secs))
    }

    fn read(rtc: &mut CmosRtc, index: u8) -> u8 {
        rtc.write(INDEX_OFFSET, &[index]);
        let mut value = [0];
        rtc.read(DATA_OFFSET, &mut value);
        value[0]
    }

    #[test]
    fn calendar_times_match_known_dates() {
        let epoch = CalendarTime::from_unix(0);
        assert_eq!(
            (epoch.year, epoch.month, epoch.day, epoch.weekday),
            (1970, 1, 1, 5)
        );
        // The leap day of a year divisible by 400, and the day after.
        let leap = CalendarTime::from_unix(951_782_400);
        assert_eq!((leap.year, leap.month, leap.day), (2000, 2, 29));
        let next = CalendarTime::from_unix(951_782_400 + 86_400);
        assert_eq!((next.year, next.month, next.day), (2000, 3, 1));
        let friday = CalendarTime::from_unix(FRIDAY);
        assert_eq!(
            friday,
            CalendarTime {
                year: 2026,
                month: 12,
                day: 4,
                weekday: 6,
                hour: 1,
                minute: 23,
                second: 45,
            }
        );
        let new_year = CalendarTime::from_unix(4_102_444_799);
        assert_eq!(
            (new_year.year, new_year.month, new_year.day, new_year.second),
            (2099, 12, 31, 59)
        );
    }

    #[test]
    fn the_guest_reads_the_time_in_bcd_as_firmware_leaves_it() {
        let mut rtc = rtc_at(FRIDAY);
        assert_eq!(read(&mut rtc, SECONDS), 0x45);
        assert_eq!(read(&mut rtc, MINUTES), 0x23);
        assert_eq!(read(&mut rtc, HOURS), 0x01);
        assert_eq!(read(&mut rtc, WEEKDAY), 0x06);
        assert_eq!(read(&mut rtc, DAY_OF_MONTH), 0x04);
        assert_eq!(read(&mut rtc, MONTH), 0x12);
        assert_eq!(read(&mut rtc, YEAR), 0x26);
        assert_eq!(read(&mut rtc, CENTURY), 0x20);
        assert_eq!(read(&mut rtc, STATUS_D), STATUS_D_VALID);
    }

    #[test]
    fn an_update_is_never_in_progress() {
        let mut rtc = rtc_at(FRIDAY);
        assert_eq!(read(&mut rtc, STATUS_A) & STATUS_A_UPDATE_IN_PROGRESS, 0);
        rtc.write(INDEX_OFFSET, &[STATUS_A]);
        rtc.write(DATA_OFFSET, &[0xff]);
        assert_eq!(read(&mut rtc, STATUS_A), 0x7f);
    }

    #[test]
    fn binary_and_12_hour_modes_are_honoured() {
        let afternoon = FRIDAY + 13 * 3600; // 14:23:45
        let mut rtc = rtc_at(afternoon);
        rtc.write(INDEX_OFFSET, &[STATUS_B]);
        rtc.write(DATA_OFFSET, &[STATUS_B_BINARY]);
        assert_eq!(read(&mut rtc, HOURS), 0x80 | 2);
        assert_eq!(read(&mut rtc, MINUTES), 23);
        rtc.write(INDEX_OFFSET, &[STATUS_B]);
        rtc.write(DATA_OFFSET, &[STATUS_B_BINARY | STATUS_B_24_HOUR]);
        assert_eq!(read(&mut rtc, HOURS), 14);
    }

    #[test]
    fn the_guest_cannot_set_the_clock_but_keeps_its_ram() {
        let mut rtc = rtc_at(FRIDAY);
        for index in [SECONDS, HOURS, YEAR, CENTURY, STATUS_C, STATUS_D] {
            let before = read(&mut rtc, index);
            rtc.write(INDEX_OFFSET, &[index]);
            rtc.write(DATA_OFFSET, &[0x59]);
            assert_eq!(read(&mut rtc, index), before, "register {index:#x}");
        }
        // NMI-mask bit on the index port; ordinary CMOS RAM keeps what is written.
        rtc.write(INDEX_OFFSET, &[0x80 | 0x40]);
        rtc.write(DATA_OFFSET, &[0xab]);
        assert_eq!(read(&mut rtc, 0x40), 0xab);
    }
}
