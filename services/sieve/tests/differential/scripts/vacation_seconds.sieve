require ["vacation", "vacation-seconds"];
vacation :seconds 3600 "Back in an hour.";
